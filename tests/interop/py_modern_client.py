#!/usr/bin/env python3
"""The official Python SDK's high-level `mcp.Client` in one of its three connect modes,
against a Streamable HTTP endpoint: lists tools, calls `echo`, reads a templated resource
and gets a prompt, then prints one JSON summary line (`ok` true when every answer is the
expected one).

    .venv/bin/python py_modern_client.py http://127.0.0.1:PORT/mcp MODE [TAG]

MODE: `2026-07-28` (adopts the stateless revision directly: every request a
self-contained POST naming itself in `Mcp-Method`/`Mcp-Name` headers), `auto` (probes
`server/discover`, falls back to `initialize`), or `legacy` (the initialize handshake).
Run against `fastmcp_server.py --http PORT` (mcp 2.x serves both eras on one endpoint).
"""

import asyncio
import json
import sys

from mcp import Client


async def main(url: str, mode: str, tag: str) -> None:
    out = {"mode": mode, "ok": False}
    text = f"hi-{mode}-{tag}"  # this client's own: its answer must echo it
    async with Client(url, mode=mode) as c:
        tools = await c.list_tools()
        echo = await c.call_tool("echo", {"message": text})
        res = await c.read_resource("greeting://bob")
        prompt = await c.get_prompt("greet", {"name": "al"})
        out.update(
            tools=len(tools.tools),
            echo=echo.content[0].text,
            resource=res.contents[0].text,
            prompt_messages=len(prompt.messages),
        )
        out["ok"] = (
            out["tools"] > 0
            and out["echo"] == f"Echo: {text}"
            and out["resource"] == "Hello, bob!"
            and out["prompt_messages"] == 1
        )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "0"))
