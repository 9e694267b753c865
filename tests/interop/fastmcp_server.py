#!/usr/bin/env python3
"""A stdio MCP server built with the official Python SDK's high-level server, for the
router's stdio-bridge interop tests.

    .venv/bin/python fastmcp_server.py              # stdio (what mcp-router --stdio runs)
    .venv/bin/python fastmcp_server.py --http PORT  # Streamable HTTP on 127.0.0.1:PORT/mcp
    .venv/bin/python fastmcp_server.py --sse PORT   # legacy HTTP+SSE on 127.0.0.1:PORT/sse

(--http / --sse exist only to validate the client scripts without the router.)

In mcp 2.x, FastMCP is called `MCPServer` (`mcp.server.mcpserver`); `mcp.server.fastmcp`
is a stub that raises ModuleNotFoundError. Same decorator API.

What it serves (names the client scripts expect with `<server-kind>` = fastmcp):

  tools
    echo(message)             -> text "Echo: <message>"
    counter_incr()            -> text "<n>": this process's counter after incrementing.
                                 Per process, so one counter per stdio child: two sessions
                                 on separate children never see each other's counts.
    whoami()                  -> text "<pid>" of this process.
    progress_steps(steps=3, delay=0.05)
                              -> sends `steps` notifications/progress (progress 1..steps,
                                 total=steps) via ctx.report_progress, then text
                                 "progress done: <steps> steps".
    sample(prompt)            -> sends sampling/createMessage to the client (related to
                                 the tools/call request) and returns text
                                 "sampled: <text the client answered>".
  resources
    info://server             -> text "mcp-router-fastmcp pid=<pid>"
    greeting://{name}         -> (template) text "Hello, <name>!"
  prompts
    greet(name)               -> one user message "Please greet <name> warmly."

Stdout carries only JSON-RPC (stdio transport); the SDK logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent

NAME = "mcp-router-fastmcp"

mcp = MCPServer(NAME, version="0.0.0", log_level="WARNING")

_counter = 0


@mcp.tool()
def echo(message: str) -> str:
    """Echo the message back."""
    return f"Echo: {message}"


@mcp.tool()
def counter_incr() -> str:
    """Increment this server process's counter and return its new value."""
    global _counter
    _counter += 1
    return str(_counter)


@mcp.tool()
def whoami() -> str:
    """The pid of this server process."""
    return str(os.getpid())


@mcp.tool()
async def progress_steps(ctx: Context, steps: int = 3, delay: float = 0.05) -> str:
    """Report progress `steps` times (if the request carried a progressToken), then return."""
    for i in range(1, steps + 1):
        await anyio.sleep(delay)
        await ctx.report_progress(i, steps, f"step {i}/{steps}")
    return f"progress done: {steps} steps"


@mcp.tool()
async def sample(prompt: str, ctx: Context) -> str:
    """Ask the client to sample an LLM message (sampling/createMessage); return its text."""
    with warnings.catch_warnings():  # sampling is deprecated for 2026-07-28, fine for 2025-*
        warnings.simplefilter("ignore")
        result = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
            max_tokens=50,
            system_prompt="You are the mcp-router interop test client.",
            related_request_id=ctx.request_id,
        )
    content = result.content
    blocks = content if isinstance(content, list) else [content]
    text = " ".join(b.text for b in blocks if getattr(b, "type", None) == "text")
    return f"sampled: {text}"


@mcp.resource("info://server", name="server-info", mime_type="text/plain")
def server_info() -> str:
    """Which server process this is."""
    return f"{NAME} pid={os.getpid()}"


@mcp.resource("greeting://{name}", name="greeting", mime_type="text/plain")
def greeting(name: str) -> str:
    """A greeting for `name` (resource template)."""
    return f"Hello, {name}!"


@mcp.prompt()
def greet(name: str) -> str:
    """A prompt asking to greet someone."""
    return f"Please greet {name} warmly."


MODERN = "2026-07-28"


def modern_only(app):
    """Wrap the SDK's dual-era ASGI app so that it serves only the 2026-07-28 revision, as
    a modern-only server does: a POST whose MCP-Protocol-Version is older (or absent, as
    on `initialize`) gets 400 with JSON-RPC -32022 (unsupported protocol version) listing
    the supported versions; GET and DELETE get 405."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        version = headers.get("mcp-protocol-version", "")
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"POST")]})
            return await send({"type": "http.response.body", "body": b""})
        if version >= MODERN:
            return await app(scope, receive, send)
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        try:
            rid = json.loads(body).get("id")
        except Exception:
            rid = None
        err = {
            "jsonrpc": "2.0",
            "id": rid,
            "error": {
                "code": -32022,
                "message": "Unsupported protocol version",
                "data": {"supported": [MODERN], "requested": version or None},
            },
        }
        out = json.dumps(err).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": out})

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description="FastMCP (MCPServer) interop server")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT/mcp")
    group.add_argument("--sse", type=int, metavar="PORT", help="serve HTTP+SSE on 127.0.0.1:PORT/sse")
    group.add_argument(
        "--modern-only",
        type=int,
        metavar="PORT",
        help="serve only the 2026-07-28 revision on 127.0.0.1:PORT/mcp (earlier eras get 400 -32022)",
    )
    args = parser.parse_args()
    if args.modern_only is not None:
        import uvicorn

        print(f"fastmcp_server: modern-only streamable HTTP on 127.0.0.1:{args.modern_only}/mcp", file=sys.stderr, flush=True)
        uvicorn.run(modern_only(mcp.streamable_http_app()), host="127.0.0.1", port=args.modern_only, log_level="warning")
    elif args.http is not None:
        print(f"fastmcp_server: streamable HTTP on 127.0.0.1:{args.http}/mcp", file=sys.stderr, flush=True)
        mcp.run("streamable-http", host="127.0.0.1", port=args.http)
    elif args.sse is not None:
        print(f"fastmcp_server: HTTP+SSE on 127.0.0.1:{args.sse}/sse", file=sys.stderr, flush=True)
        mcp.run("sse", host="127.0.0.1", port=args.sse)
    else:
        mcp.run("stdio")


if __name__ == "__main__":
    main()
