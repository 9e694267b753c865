#!/usr/bin/env python3
"""Write the small checked-in seed corpora (fuzz/corpus/<target>/seed-*).

Each parser target reads control bytes first (limits, split points), then the data;
see core/src/fuzzing/mod.rs. Run from anywhere: python3 fuzz/make-seeds.py
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
            f.write(s)

reqs = [
    b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /mcp HTTP/1.1\r\nAccept: text/event-stream\r\nMcp-Session-Id: abc-123\r\n\r\n",
    b"DELETE /mcp HTTP/1.1\r\nHost: a\r\nMcp-Session-Id: s1\r\nConnection: close\r\n\r\n",
    b"POST /messages?sessionId=abc HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nTransfer-Encoding:\tchunked \r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
    b"GET /mcp HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /mcp HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"POST /mcp HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close, x-custom\r\nX-Custom: 1\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nMCP-Protocol-Version: 2026-07-28\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: evil\r\n\r\n",
]
put("request_head", [bytes([c, p]) + r for r, (c, p) in zip(reqs, [(3, 255), (2, 128), (3, 40), (1, 200)] * 8)])

resps = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: s1\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 404 \r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    b"HTTP/1.1 999 Whatever\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"garbage\r\n\r\n",
]
put("response_head", [bytes([3, p, m]) + r for r, (p, m) in zip(resps, [(255, 0), (100, 1), (255, 2), (30, 3)] * 4)])

bodies = [
    (0x08, b"5\r\nhello\r\n0\r\n\r\n"),
    (0x08, b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"),
    (0x08, b"ffffffffffffffff\r\nabc"),
    (0x08, b"10000000000000000\r\n"),
    (0x08, b"-1\r\n"),
    (0x08, b"0x5\r\nhello\r\n0\r\n\r\n"),
    (0x08, b"5 ;x\r\nhello\r\n0\r\n\r\n"),
    (0x08, b"5\nhello\n0\n\n"),
    (0x08, b"5\r\nhelloXX0\r\n\r\n"),
    (0x09, b"1;" + b"a" * 100 + b"\r\nx\r\n0\r\n\r\n"),
    (0x00, b"0123456789abcdef"),
    (0x04, b"close-delimited body"),
]
put("chunked", [bytes([c, 3, 40, 90, 130, 170, 200, 230, 250]) + b for c, b in bodies])

events = [
    b"event: endpoint\ndata: /messages?sessionId=abc\n\n",
    b"\xef\xbb\xbfdata: a\r\ndata: b\r\n\r\nid: 7\rdata\r\r",
    b": comment\nretry: 10\nid: x\x00y\ndata:no space\n\nevent\ndata\n\n",
    b"data: " + b"x" * 100 + b"\n\ndata: small\n\n",
    b"event: a\nevent: b\nid: 1\nid: 2\ndata: z\n\n",
]
put("sse", [bytes([c, 5, 20, 60, 100, 140, 180, 220, 250]) + e for e, c in zip(events, [3, 2, 3, 1, 0])])

json = [
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}',
    b'{"method":"tools/call","params":{"method":"x","id":9},"id":"abc","jsonrpc":"2.0"}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
    b'{"id":-0.5e+10,"method":"in\\u0069tialize"}',
    b'{"method":"a","method":"b","id":1,"id":2}',
    b'{"id":null,"method":"\\ud83d\\ude00"}',
    b'{"id":"\\ud800","method":"x"}',
    b'{"id":1e400,"method":"x"}',
    b'{"id":[1],"method":{"a":1}}',
    b'  "just a string"  ',
    b'{"id":1,"method":"x"} trailing',
    b'{"a":' * 130 + b'1' + b'}' * 130,
    b'{"id":01,"method":"x"}',
    b'{"method":"\xc3\x28"}',
    b'{"method":"' + b'm' * 200 + b'","id":2}',
    # 2026-07-28: the members compared with Mcp-Name and MCP-Protocol-Version
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_weather","arguments":{"name":"x","_meta":{}},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}',
    b'{"jsonrpc":"2.0","id":"r","method":"resources/read","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-27"},"uri":"get_w\\u0065ather"}}',
    b'{"method":"prompts/get","params":{"name":"get_weather","name":"other","_meta":{"io.modelcontextprotocol/protocolVersion":2026}}}',
]
put("sniff", [bytes([1, 9, 17, 33, 65, 129, 200, 250]) + j for j in json])

ids = [
    bytes([0x80]) + b"abc-123",
    bytes([0x40]) + b"has space",
    bytes([0xC0]) + b"sessionId=abc&session_id=def",
    bytes([0xC0]) + b"x=1&session_id=a%2Fb%zz",
    bytes([0x80]) + b"  /messages/?session_id=a%41#frag?sessionId=no ",
    bytes([0x80]) + b"http://h:1/messages?sessionId=abc",
    bytes([0x80]) + b" 2026-07-28\t",
    bytes([0x80]) + b"2025-06-18",
    bytes([0x80]) + b"2099-13-99",
    bytes([0x80]) + b'"a\\"b\\u0000"',
    bytes([0x80]) + b"-12.5e3",
    bytes([0x00]) + b"\x7f\x00",
]
put("session_id", ids)

# sealed_id: even first byte = a client's id (never opens), odd = fields to seal
put("sealed_id", [
    b"\x00" + b"not-a-token",
    b"\x00" + b"AQAA" * 40,
    b"\x02" + b"_" * 300,
    b"\x01" + bytes(range(45)) + b"6c1f3a9e-2b7d-4c58-9e1a-0123456789ab",
    b"\x03" + bytes(range(100, 145)) + b"x" * 200,
    b"\x01" + bytes([255] * 45) + b"s",
    b"\x01" + bytes(45) + b"y" * 128,
])
