#!/usr/bin/env python3
"""One Streamable HTTP session with the official Python SDK, held open across a
backend's death, for the router's failover test (suite/tests/interop.rs).

    .venv/bin/python py_failover_client.py <base-url> [--timeout SECONDS]

initialize, tools/call echo, then prints `READY <session id>` and waits for one line on
stdin (the test kills a backend meanwhile); then tools/call echo again, and DELETE on
close. httpx event hooks count the `initialize` requests sent, the statuses received
and every Mcp-Session-Id the responses carried. Prints exactly one JSON line:
  {"ok":true,"before":<id>,"ids":[...],"initializes":N,"statuses":[...],"echo":...}
or {"ok":false,"error":"..."} with exit status 1 (also on the timeout, default 60 s).
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
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

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
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def call(session: ClientSession, message: str) -> str:
    result = await session.call_tool("echo", {"message": message})
    if result.is_error:
        raise RuntimeError(f"echo failed: {result!r}")
    for block in result.content or []:
        if getattr(block, "type", None) == "text" and message in block.text:
            return block.text
    raise RuntimeError(f"unexpected echo result: {result!r}")


async def main_async(base: str) -> dict:
    ids: list[str] = []
    statuses: list[str] = []
    initializes = 0

    async def on_request(request) -> None:  # type: ignore[no-untyped-def]
        nonlocal initializes
        try:
            body = request.content or b""
        except Exception:  # a streamed body: not an initialize
            body = b""
        if b'"method":"initialize"' in body.replace(b" ", b""):
            initializes += 1

    async def on_response(response) -> None:  # type: ignore[no-untyped-def]
        statuses.append(f"{response.request.method} {response.status_code}")
        sid = response.headers.get("mcp-session-id")
        if sid:
            ids.append(sid)

    http_client = create_mcp_http_client()
    http_client.event_hooks = {"request": [on_request], "response": [on_response]}
    async with http_client:
        async with streamable_http_client(
            f"{base}/mcp", http_client=http_client, terminate_on_close=True
        ) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await call(session, "before-the-kill")
                before = ids[0] if ids else None
                sys.stdout.write(f"READY {before}\n")
                sys.stdout.flush()
                await anyio.to_thread.run_sync(sys.stdin.readline)
                echo = await call(session, "after-the-kill")
    return {
        "ok": True,
        "before": before,
        "ids": sorted(set(ids)),
        "initializes": initializes,
        "statuses": statuses,
        "echo": echo,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)

    def hard_timeout() -> None:
        emit({"ok": False, "error": f"timeout after {args.timeout:g} s"})
        os._exit(1)

    watchdog = threading.Timer(args.timeout, hard_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        result = anyio.run(main_async, args.base_url.rstrip("/"))
    except BaseException as e:  # noqa: BLE001 - report everything as one JSON line
        emit({"ok": False, "error": describe(e)})
        return 1
    finally:
        watchdog.cancel()
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
