#!/usr/bin/env python3
"""One MCP session with the official Python SDK (`mcp` on PyPI), for interop tests.

    .venv/bin/python py_client.py <base-url> <streamable|sse> [--rounds N] [--timeout SECONDS] [--no-delete]

streamable: mcp.client.streamable_http.streamable_http_client on <base-url>/mcp
sse:        mcp.client.sse.sse_client (legacy HTTP+SSE) on <base-url>/sse

Steps: initialize (ClientSession.initialize: the classic handshake, not the 2026-07-28
`server/discover` probe that the high-level mcp.Client does in its default mode="auto"),
tools/list, N x tools/call echo {"message": "hello-from-py"}, then close. For streamable,
streamable_http_client(terminate_on_close=True) -- also its default in mcp 2.3.0 -- sends
DELETE with the session id when its context exits; --no-delete passes
terminate_on_close=False instead: the client stops without DELETE, leaving the session to
the server's or the router's idle expiry.

Prints exactly one JSON line on stdout:
  {"ok":true,"sdk":"py","mode":...,"tools":<count>,"echo":"<text>","sessionId":"<id or null>"}
or {"ok":false,"error":"..."} with exit status 1 (also on the hard timeout, default 30 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading

import anyio
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

MESSAGE = "hello-from-py"
_print_lock = threading.Lock()
_printed = False


def emit(obj: dict) -> None:
    global _printed
    with _print_lock:
        if not _printed:
            _printed = True
            sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
            sys.stdout.flush()


def describe(exc: BaseException) -> str:
    # anyio task groups wrap errors in ExceptionGroups; report the innermost ones.
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def echo_text(result) -> str:
    for block in result.content or []:
        if getattr(block, "type", None) == "text":
            return block.text
    raise RuntimeError(f"echo returned no text content: {result!r}")


async def run_session(session: ClientSession, rounds: int) -> tuple[int, str]:
    await session.initialize()  # initialize + notifications/initialized
    listed = await session.list_tools()
    if not any(t.name == "echo" for t in listed.tools):
        raise RuntimeError("server has no echo tool")
    echo = ""
    for _ in range(rounds):
        result = await session.call_tool("echo", {"message": MESSAGE})
        if result.is_error:
            raise RuntimeError(f"echo failed: {result!r}")
        echo = echo_text(result)
        if MESSAGE not in echo:
            raise RuntimeError(f"unexpected echo text: {echo!r}")
    return len(listed.tools), echo


async def main_async(base: str, mode: str, rounds: int, delete: bool = True) -> dict:
    session_id: str | None = None
    if mode == "streamable":
        # streamable_http_client yields only the stream pair, not the transport that holds
        # the session id, so read Mcp-Session-Id off the responses with an httpx2 hook.
        async def on_response(response) -> None:  # type: ignore[no-untyped-def]
            nonlocal session_id
            sid = response.headers.get("mcp-session-id")
            if sid and session_id is None:
                session_id = sid

        http_client = create_mcp_http_client()  # the SDK's default client (timeouts)
        http_client.event_hooks = {"request": [], "response": [on_response]}
        async with http_client:
            async with streamable_http_client(
                f"{base}/mcp", http_client=http_client, terminate_on_close=delete
            ) as (read, write):
                async with ClientSession(read, write) as session:
                    tools, echo = await run_session(session, rounds)
            # leaving streamable_http_client sent DELETE <base>/mcp (unless --no-delete)
    else:

        def on_session_created(sid: str) -> None:
            nonlocal session_id
            session_id = sid

        async with sse_client(f"{base}/sse", on_session_created=on_session_created) as (read, write):
            async with ClientSession(read, write) as session:
                tools, echo = await run_session(session, rounds)
    return {"ok": True, "sdk": "py", "mode": mode, "tools": tools, "echo": echo, "sessionId": session_id}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("mode", choices=["streamable", "sse"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--no-delete", action="store_true")
    try:
        args = parser.parse_args()
        if args.rounds < 1 or args.timeout <= 0:
            raise ValueError("--rounds must be >= 1 and --timeout > 0")
    except SystemExit:
        emit({"ok": False, "error": "usage: py_client.py <base-url> <streamable|sse> [--rounds N] [--timeout S]"})
        return 1
    except ValueError as e:
        emit({"ok": False, "error": str(e)})
        return 1

    logging.basicConfig(level=logging.CRITICAL)  # keep stdout/stderr to the one JSON line

    # Hard timeout independent of the event loop: even a wedged loop cannot keep us alive.
    def hard_timeout() -> None:
        emit({"ok": False, "error": f"timeout after {args.timeout:g} s"})
        os._exit(1)

    watchdog = threading.Timer(args.timeout, hard_timeout)
    watchdog.daemon = True
    watchdog.start()

    base = args.base_url.rstrip("/")
    try:
        result = anyio.run(main_async, base, args.mode, args.rounds, not args.no_delete)
    except BaseException as e:  # noqa: BLE001 - report everything as one JSON line
        emit({"ok": False, "error": describe(e)})
        return 1
    finally:
        watchdog.cancel()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
