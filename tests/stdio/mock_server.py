#!/usr/bin/env python3
"""A tiny stdio MCP server for mcp-router's stdio bridge tests (standard library only).

Newline-delimited JSON-RPC on stdin/stdout. It keeps per-process state (a counter) so
tests can tell whether two sessions share a process, and can be told to misbehave.

Tools (tools/call, name -> behaviour):
  incr                 counter += 1; returns the new value as text
  get                  returns the counter
  pid                  returns os.getpid()
  echo {text, delay_ms}  returns text after delay_ms (answers may come out of order)
  slow {steps}         sends `steps` progress notifications (if a progressToken was
                       given), then answers "done"
  sample {prompt}      sends sampling/createMessage to the client, waits for the
                       answer, returns the sampled text
  notify               sends a notifications/message (no token), answers "ok"
  crash                exits with status 3 at once
  garbage              writes a line that is not JSON-RPC
  grandchild           starts `sleep 1000` in the background, returns its pid
  escape               starts `sleep 1000` in a new session (out of the process
                       group), returns its pid
  flood {n, size}      sends n notifications/message of about `size` bytes, then
                       answers "flooded"

With `--stubborn` it ignores SIGTERM, SIGHUP and SIGINT and, at EOF on stdin, sleeps
forever instead of exiting: only SIGKILL ends it (the kill -9 orphan tests).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

lock = threading.Lock()
counter = 0
pending_samples = {}  # server request id -> client request id
next_sample = 0


def send(msg):
    data = json.dumps(msg)
    with lock:
        sys.stdout.write(data + "\n")
        sys.stdout.flush()


def text_result(rid, text):
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": str(text)}]}})


TOOLS = ["incr", "get", "pid", "echo", "slow", "sample", "notify", "crash", "garbage", "grandchild", "escape",
         "flood"]


def call(rid, params):
    global counter, next_sample
    name = params.get("name")
    args = params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "incr":
        counter += 1
        text_result(rid, counter)
    elif name == "get":
        text_result(rid, counter)
    elif name == "pid":
        text_result(rid, os.getpid())
    elif name == "echo":
        delay = float(args.get("delay_ms", 0)) / 1000.0
        t = threading.Timer(delay, text_result, (rid, args.get("text", "")))
        t.daemon = True
        t.start()
    elif name == "slow":
        steps = int(args.get("steps", 2))
        for i in range(steps):
            if token is not None:
                send({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"progressToken": token, "progress": i + 1, "total": steps}})
        text_result(rid, "done")
    elif name == "sample":
        next_sample += 1
        sid = "srv-%d" % next_sample
        pending_samples[sid] = rid
        send({"jsonrpc": "2.0", "id": sid, "method": "sampling/createMessage",
              "params": {"messages": [{"role": "user", "content": {"type": "text", "text": args.get("prompt", "")}}],
                         "maxTokens": 10}})
    elif name == "notify":
        send({"jsonrpc": "2.0", "method": "notifications/message",
              "params": {"level": "info", "data": "hello from %d" % os.getpid()}})
        text_result(rid, "ok")
    elif name == "crash":
        sys.stdout.flush()
        os._exit(3)
    elif name == "garbage":
        with lock:
            sys.stdout.write("this is not JSON-RPC\n")
            sys.stdout.flush()
    elif name == "grandchild":
        p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text_result(rid, p.pid)
    elif name == "escape":
        p = subprocess.Popen(["sleep", "1000"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        text_result(rid, p.pid)
    elif name == "flood":
        pad = "x" * int(args.get("size", 1000))
        for i in range(int(args.get("n", 1000))):
            send({"jsonrpc": "2.0", "method": "notifications/message",
                  "params": {"level": "info", "data": {"i": i, "pad": pad}}})
        text_result(rid, "flooded")
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "unknown tool %s" % name}})


def main():
    stubborn = "--stubborn" in sys.argv[1:]
    if stubborn:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    sys.stderr.write("mock stdio server %d starting\n" % os.getpid())
    sys.stderr.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        method = msg.get("method")
        rid = msg.get("id")
        if method is None:
            # a response to one of our requests
            client_rid = pending_samples.pop(rid, None)
            if client_rid is not None:
                res = msg.get("result") or {}
                text = (res.get("content") or {}).get("text", "")
                text_result(client_rid, "sampled: " + text)
            continue
        if rid is None:
            continue  # notification
        if method == "initialize":
            v = (msg.get("params") or {}).get("protocolVersion") or "2025-03-26"
            send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": v, "capabilities": {"tools": {}},
                "serverInfo": {"name": "mock-stdio", "version": "1"}}})
        elif method == "ping":
            send({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "tools/list":
            send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [
                {"name": n, "inputSchema": {"type": "object"}} for n in TOOLS]}})
        elif method == "tools/call":
            call(rid, msg.get("params") or {})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "method not found"}})
    if stubborn:
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
