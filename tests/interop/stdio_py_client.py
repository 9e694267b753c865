#!/usr/bin/env python3
"""Full-feature MCP session(s) with the official Python SDK (`mcp` on PyPI), for the
router's stdio-bridge tests (mcp-router --stdio "<command>"), also usable against any
HTTP MCP server.

    .venv/bin/python stdio_py_client.py <base-url> <streamable|sse> [everything|fastmcp]
                                        [--sessions N] [--expect-shared] [--timeout SECONDS]

streamable: mcp.client.streamable_http.streamable_http_client on <base-url>/mcp
sse:        mcp.client.sse.sse_client (legacy HTTP+SSE) on <base-url>/sse
server kind: which server sits behind the URL (default: guessed from serverInfo.name;
  "mcp-router-fastmcp" -> fastmcp, anything else -> everything). Given explicitly, it must
  match serverInfo.name.

Same checks as stdio_ts_client.mjs: initialize (ClientSession.initialize, the classic
handshake), tools/list, tools/call echo, resources/list + read + templates/list + templated
read, prompts/list + prompts/get with an argument, a progress tool (>= 1 notification must
reach the progress callback), a sampling round trip (our sampling_callback answers
SAMPLE_TEXT; the tool result must contain it), fastmcp whoami + counter_incr, then close
(streamable: terminate_on_close=True sends DELETE; its status is checked: 2xx or 405).

--sessions N (N >= 2): N concurrent sessions; session i (1-based) calls counter_incr i
times while all are open. Default asserts per-session isolation (session i ends at exactly
i, pids all differ); --expect-shared asserts one pid and no counter value seen twice.
For everything: echo in each session and distinct session ids.

Stdout: one JSON line per check, {"check":"<name>","ok":true,...}, and last a summary
{"check":"all","ok":true,"sdk":"py",...}. On failure {"check":"<name>","ok":false,"error":...}
then {"check":"all","ok":false,"error":...}, exit status 1 (also on the hard timeout,
default 60 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SDK = "py"
ECHO_MESSAGE = "hello-from-py-stdio"
SAMPLE_TEXT = "sampled-answer-from-py-client-5182"
FASTMCP_NAME = "mcp-router-fastmcp"

NAMES = {
    "everything": {
        "echo": ["echo"],
        "progress": ["trigger-long-running-operation", "longRunningOperation"],
        "sampling": ["trigger-sampling-request", "sampleLLM"],
        "prompt": ["args-prompt", "complex_prompt"],
    },
    "fastmcp": {
        "echo": ["echo"],
        "progress": ["progress_steps"],
        "sampling": ["sample"],
        "prompt": ["greet"],
    },
}

_lock = threading.Lock()
_finished = False
_checks = 0
_last_check = "setup"


def line(obj: dict) -> None:
    with _lock:
        sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
        sys.stdout.flush()


def ok(check: str, **extra: Any) -> None:
    global _checks
    _checks += 1
    line({"check": check, "ok": True, **extra})


def finish_fail(error: str) -> None:
    global _finished
    with _lock:
        if _finished:
            return
        _finished = True
    line({"check": _last_check, "ok": False, "error": error})
    line({"check": "all", "ok": False, "sdk": SDK, "error": f"{_last_check}: {error}"})


def step(name: str) -> None:
    global _last_check
    _last_check = name


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def text_of(result: types.CallToolResult, what: str) -> str:
    if result.is_error:
        raise AssertionError(f"{what} returned isError: {result!r}")
    t = [b.text for b in result.content or [] if getattr(b, "type", None) == "text"]
    if not t:
        raise AssertionError(f"{what} returned no text content: {result!r}")
    return "\n".join(t)


def pick(available: list[str], candidates: list[str], what: str) -> str:
    for c in candidates:
        if c in available:
            return c
    raise AssertionError(f"no {what} tool/prompt among {candidates}; have {available}")


class Session:
    """One connected ClientSession plus what we observed about it on the wire."""

    def __init__(self) -> None:
        self.session: ClientSession | None = None
        self.session_id: str | None = None
        self.delete_status: int | None = None
        self.sampling_requests: list[types.CreateMessageRequestParams] = []
        self.init: types.InitializeResult | None = None
        self.stack = AsyncExitStack()

    async def sampling_callback(self, context, params: types.CreateMessageRequestParams):  # type: ignore[no-untyped-def]
        self.sampling_requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            model="interop-fake-model",
            stop_reason="endTurn",
            content=types.TextContent(type="text", text=SAMPLE_TEXT),
        )

    async def open(self, base: str, mode: str) -> None:
        if mode == "streamable":
            # streamable_http_client yields only the stream pair: read Mcp-Session-Id and the
            # DELETE status off the responses with an httpx2 hook.
            async def on_response(response) -> None:  # type: ignore[no-untyped-def]
                sid = response.headers.get("mcp-session-id")
                if sid and self.session_id is None:
                    self.session_id = sid
                if response.request.method == "DELETE":
                    self.delete_status = response.status_code

            http_client = create_mcp_http_client()  # the SDK's default client (timeouts)
            http_client.event_hooks = {"request": [], "response": [on_response]}
            await self.stack.enter_async_context(http_client)
            read, write = await self.stack.enter_async_context(
                streamable_http_client(f"{base}/mcp", http_client=http_client, terminate_on_close=True)
            )
        else:

            def on_session_created(sid: str) -> None:
                self.session_id = sid

            read, write = await self.stack.enter_async_context(
                sse_client(f"{base}/sse", on_session_created=on_session_created)
            )
        self.session = await self.stack.enter_async_context(
            ClientSession(read, write, sampling_callback=self.sampling_callback)
        )
        self.init = await self.session.initialize()  # initialize + notifications/initialized

    async def close(self, mode: str) -> int | None:
        await self.stack.aclose()  # streamable: DELETE /mcp (terminate_on_close)
        if mode == "streamable":
            check(self.delete_status is not None, "no DELETE was sent on close")
            check(
                200 <= self.delete_status < 300 or self.delete_status == 405,  # type: ignore[operator]
                f"DELETE answered {self.delete_status}",
            )
        return self.delete_status

    def kind(self, given: str | None) -> str:
        name = self.init.server_info.name if self.init else ""
        guessed = "fastmcp" if name == FASTMCP_NAME else "everything"
        if given and given != guessed:
            raise AssertionError(f"server kind {given} given, but serverInfo.name is {name!r}")
        return given or guessed

    async def call(self, name: str, args: dict[str, Any], **kw: Any) -> str:
        assert self.session is not None
        return text_of(await self.session.call_tool(name, args, **kw), name)


async def list_tools(s: ClientSession, want: list[list[str]]) -> tuple[list[str], int]:
    """tools/list; server-everything registers its sampling tool after
    notifications/initialized, so re-list a few times if it is not there yet."""
    relisted = 0
    while True:
        names = [t.name for t in (await s.list_tools()).tools]
        if all(any(c in names for c in cands) for cands in want) or relisted >= 10:
            return names, relisted
        relisted += 1
        await anyio.sleep(0.2)


async def single_session(base: str, mode: str, given_kind: str | None) -> dict:
    step("initialize")
    s = Session()
    await s.open(base, mode)
    kind = s.kind(given_kind)
    names = NAMES[kind]
    c = s.session
    assert c is not None and s.init is not None
    ok(
        "initialize",
        server=s.init.server_info.name,
        kind=kind,
        protocolVersion=s.init.protocol_version,
        sessionId=s.session_id,
    )

    step("tools/list")
    tools, relisted = await list_tools(c, [names["echo"], names["progress"], names["sampling"]])
    t = {k: pick(tools, names[k], k) for k in ("echo", "progress", "sampling")}
    ok("tools/list", tools=len(tools), relisted=relisted, using=t)

    step("tools/call")
    text = await s.call(t["echo"], {"message": ECHO_MESSAGE})
    check(ECHO_MESSAGE in text, f"echo answered {text!r}")
    ok("tools/call", tool=t["echo"], text=text)

    step("resources")
    resources = (await c.list_resources()).resources
    check(len(resources) > 0, "resources/list is empty")
    templates = (await c.list_resource_templates()).resource_templates
    if kind == "fastmcp":
        static_uri, static_want = "info://server", FASTMCP_NAME
        tmpl, tmpl_uri, tmpl_want = "greeting://{name}", "greeting://py-client", "Hello, py-client!"
    else:
        static_uri, static_want = str(resources[0].uri), None
        tmpl = "demo://resource/dynamic/text/{resourceId}"
        tmpl_uri, tmpl_want = "demo://resource/dynamic/text/1", "Resource 1"
    uris = [str(r.uri) for r in resources]
    check(static_uri in uris, f"resources/list lacks {static_uri}: {uris}")
    tmpls = [r.uri_template for r in templates]
    check(tmpl in tmpls, f"resources/templates/list lacks {tmpl}: {tmpls}")
    read1 = await c.read_resource(static_uri)
    body1 = getattr(read1.contents[0], "text", None) or getattr(read1.contents[0], "blob", "") if read1.contents else ""
    check(len(body1) > 0, f"resources/read {static_uri} empty: {read1!r}")
    if static_want:
        check(static_want in body1, f"resources/read {static_uri}: {body1!r}")
    read2 = await c.read_resource(tmpl_uri)
    body2 = getattr(read2.contents[0], "text", "") if read2.contents else ""
    check(tmpl_want in body2, f"resources/read {tmpl_uri}: {read2!r}")
    ok("resources", resources=len(resources), templates=len(templates), read=static_uri, readTemplate=tmpl_uri, text=body2)

    step("prompts")
    prompts = (await c.list_prompts()).prompts
    pname = pick([p.name for p in prompts], names["prompt"], "prompt")
    pargs, pwant = ({"name": "py-client"}, "Please greet py-client") if kind == "fastmcp" else ({"city": "Paris"}, "Paris")
    got = await c.get_prompt(pname, pargs)
    ptext = "\n".join(getattr(m.content, "text", "") for m in got.messages)
    check(pwant in ptext, f"prompts/get {pname}: {got!r}")
    ok("prompts", prompts=len(prompts), prompt=pname, text=ptext)

    step("progress")
    seen: list[dict] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append({"progress": progress, "total": total, "message": message})

    pa = {"steps": 3, "delay": 0.05} if kind == "fastmcp" else {"duration": 0.6, "steps": 3}
    text = await s.call(t["progress"], pa, read_timeout_seconds=30, progress_callback=on_progress)
    check(len(seen) >= 1, f"no progress notification reached the callback (result {text!r})")
    ok("progress", tool=t["progress"], notifications=len(seen), last=seen[-1], text=text)

    step("sampling")
    sa = {"prompt": "say something"} if kind == "fastmcp" else {"prompt": "say something", "maxTokens": 20}
    text = await s.call(t["sampling"], sa, read_timeout_seconds=30)
    check(len(s.sampling_requests) == 1, f"sampling callback called {len(s.sampling_requests)} times")
    check(SAMPLE_TEXT in text, f"sampling tool result lacks {SAMPLE_TEXT}: {text!r}")
    ok("sampling", tool=t["sampling"], text=text[:200])

    if kind == "fastmcp":
        step("state")
        pid = int(await s.call("whoami", {}))
        n1 = int(await s.call("counter_incr", {}))
        n2 = int(await s.call("counter_incr", {}))
        check(n2 == n1 + 1, f"counter_incr gave {n1} then {n2}")
        ok("state", pid=pid, counter=n2)

    step("close")
    status = await s.close(mode)
    ok("close", delete=status if mode == "streamable" else "n/a (sse: GET stream closed)")
    return {"server": kind, "sessionId": s.session_id}


class Barrier:
    """All n tasks wait until all n arrived (anyio has no barrier)."""

    def __init__(self, n: int) -> None:
        self.n, self.arrived, self.event = n, 0, anyio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived == self.n:
            self.event.set()
        await self.event.wait()


async def many_sessions(base: str, mode: str, given_kind: str | None, n: int, expect_shared: bool) -> dict:
    # Each session lives in its own task from open to close (the SDK transports hold task
    # groups, which must be entered and left by the same task); barriers keep all n open at
    # once while they work.
    sessions = [Session() for _ in range(n)]
    opened, worked = Barrier(n), Barrier(n)
    per: list[dict] = [{} for _ in range(n)]
    statuses: list[int | None] = [None] * n
    kinds: list[str] = [""] * n
    failures: list[str] = []

    async def run(i: int, s: Session) -> None:
        try:
            await s.open(base, mode)
            kinds[i] = s.kind(given_kind)
        except BaseException as e:
            failures.append(f"session {i + 1} open: {describe(e)}")
            raise
        await opened.wait()
        try:
            if kinds[i] == "fastmcp":
                pid = int(await s.call("whoami", {}))
                values = [int(await s.call("counter_incr", {})) for _ in range(i + 1)]
                per[i] = {"pid": pid, "values": values}
            else:
                per[i] = {"echo": await s.call("echo", {"message": f"{ECHO_MESSAGE}-{i + 1}"})}
        except BaseException as e:
            failures.append(f"session {i + 1}: {describe(e)}")
            raise
        await worked.wait()
        statuses[i] = await s.close(mode)

    step("initialize")
    async with anyio.create_task_group() as tg:
        for i, s in enumerate(sessions):
            tg.start_soon(run, i, s)
    kind = kinds[0]
    ids = [s.session_id for s in sessions]
    check(len(set(ids)) == n, f"session ids not distinct: {ids}")
    ok("initialize", sessions=n, kind=kind, sessionIds=ids)

    if kind == "fastmcp":
        step("isolation")
        pids = [p["pid"] for p in per]
        finals = [p["values"][-1] for p in per]
        if expect_shared:
            check(len(set(pids)) == 1, f"expected one shared server process, got pids {pids}")
            allv = [v for p in per for v in p["values"]]
            check(len(set(allv)) == len(allv), f"a counter value was seen twice: {per}")
        else:
            check(len(set(pids)) == n, f"sessions share a server process: pids {pids}")
            for i, p in enumerate(per):
                check(
                    p["values"] == list(range(1, i + 2)),
                    f"session {i + 1} saw counter values {p['values']}, expected 1..{i + 1}",
                )
        ok("isolation", shared=expect_shared, pids=pids, finals=finals)
    else:
        step("echo")
        for i, p in enumerate(per):
            check(f"{ECHO_MESSAGE}-{i + 1}" in p["echo"], f"session {i + 1} echo: {p['echo']!r}")
        ok("echo", sessions=n)

    ok("close", delete=statuses if mode == "streamable" else "n/a (sse)")
    return {"server": kind, "sessionId": ids}


def main() -> int:
    parser = argparse.ArgumentParser(description="stdio-bridge interop client (Python SDK)")
    parser.add_argument("base_url")
    parser.add_argument("mode", choices=["streamable", "sse"])
    parser.add_argument("kind", nargs="?", choices=["everything", "fastmcp"])
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--expect-shared", action="store_true")
    parser.add_argument("--timeout", type=float, default=60.0)
    try:
        args = parser.parse_args()
        if args.sessions < 1 or args.timeout <= 0:
            raise ValueError("--sessions must be >= 1 and --timeout > 0")
    except SystemExit:
        finish_fail(
            "usage: stdio_py_client.py <base-url> <streamable|sse> [everything|fastmcp] "
            "[--sessions N] [--expect-shared] [--timeout S]"
        )
        return 1
    except ValueError as e:
        finish_fail(str(e))
        return 1

    logging.basicConfig(level=logging.CRITICAL)  # stdout is for the JSON lines only

    def hard_timeout() -> None:
        finish_fail(f"timeout after {args.timeout:g} s")
        os._exit(1)

    watchdog = threading.Timer(args.timeout, hard_timeout)
    watchdog.daemon = True
    watchdog.start()

    base = args.base_url.rstrip("/")
    try:
        if args.sessions == 1:
            r = anyio.run(single_session, base, args.mode, args.kind)
        else:
            r = anyio.run(many_sessions, base, args.mode, args.kind, args.sessions, args.expect_shared)
    except BaseException as e:  # noqa: BLE001 - report everything as JSON lines
        finish_fail(describe(e))
        return 1
    finally:
        watchdog.cancel()
    global _finished
    with _lock:
        _finished = True
    line({"check": "all", "ok": True, "sdk": SDK, "mode": args.mode, "sessions": args.sessions, "checks": _checks, **r})
    return 0


if __name__ == "__main__":
    sys.exit(main())
