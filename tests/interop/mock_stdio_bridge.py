#!/usr/bin/env python3
"""A deliberately small stdio -> HTTP bridge, one child per session, used ONLY to validate
the stdio_* client scripts' per-session paths (isolation, server -> client requests and
notifications through a pipe) before mcp-router's own bridge exists. Not the product.

    .venv/bin/python mock_stdio_bridge.py PORT "<stdio server command>" [--to-get]

--to-get: (experiment) send every child -> client message that is not a response to the
GET stream, to see what clients do when progress and server requests leave the POST stream.

Streamable HTTP on /mcp (POST/GET/DELETE, Mcp-Session-Id) and legacy HTTP+SSE on /sse +
/message?sessionId=<id>. Routing of child -> client messages: a response goes to the POST
stream of its request; any other message (notification, server request) goes to the most
recent in-flight POST stream of the session if there is one, else to its GET stream
(dropped if none). That is the policy the README recommends to the Rust side.
"""

from __future__ import annotations

import json
import shlex
import sys
import uuid

import anyio
import uvicorn
from anyio.streams.memory import MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

COMMAND: list[str] = []
TO_GET = False


def sse(data: str, event: str = "message") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class Session:
    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        self.proc: anyio.abc.Process | None = None
        self.inflight: dict[object, MemoryObjectSendStream[str]] = {}  # request id -> POST stream
        self.order: list[object] = []
        self.get_stream: MemoryObjectSendStream[str] | None = None
        self.closed = anyio.Event()
        self.legacy = False  # HTTP+SSE: everything goes on the one GET stream

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        self.proc = await anyio.open_process(COMMAND, stderr=None)
        tg.start_soon(self._pump)

    async def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                if raw.strip():
                    await self._route(raw.decode())
        self.closed.set()
        if self.get_stream:
            await self.get_stream.aclose()

    async def _route(self, line: str) -> None:
        msg = json.loads(line)
        if self.legacy:
            target = self.get_stream
            if target is not None:
                await target.send(line)
            return
        if "method" not in msg and "id" in msg:  # a response to a client request
            target = self.inflight.pop(msg["id"], None)
            if msg["id"] in self.order:
                self.order.remove(msg["id"])
        elif self.order and not TO_GET:
            target = self.inflight[self.order[-1]]
        else:
            target = self.get_stream
        if target is not None:
            try:
                await target.send(line)
                if "method" not in msg and "id" in msg:
                    await target.aclose()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

    async def write(self, body: bytes) -> None:
        assert self.proc and self.proc.stdin
        await self.proc.stdin.send(body.strip() + b"\n")

    async def stop(self) -> None:
        if self.proc is None:
            return
        try:
            await self.proc.stdin.aclose()  # type: ignore[union-attr]
        except Exception:
            pass
        with anyio.move_on_after(3):
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()


sessions: dict[str, Session] = {}
TG: anyio.abc.TaskGroup


async def mcp_post(request: Request) -> Response:
    body = await request.body()
    msg = json.loads(body)
    sid = request.headers.get("mcp-session-id")
    headers = {}
    if msg.get("method") == "initialize":
        s = Session()
        await s.start(TG)
        sessions[s.id] = s
        headers["mcp-session-id"] = s.id
    elif sid in sessions:
        s = sessions[sid]
    else:
        return JSONResponse({"jsonrpc": "2.0", "id": msg.get("id"), "error": {"code": -32001, "message": "Session not found"}}, 404)
    if "method" in msg and "id" in msg:
        send, recv = anyio.create_memory_object_stream[str](100)
        s.inflight[msg["id"]] = send
        s.order.append(msg["id"])
        await s.write(body)

        async def gen():
            async with recv:
                async for line in recv:
                    yield sse(line)

        return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)
    await s.write(body)
    return Response(status_code=202)


async def mcp_get(request: Request) -> Response:
    s = sessions.get(request.headers.get("mcp-session-id", ""))
    if s is None:
        return Response(status_code=404)
    send, recv = anyio.create_memory_object_stream[str](100)
    s.get_stream = send

    async def gen():
        async with recv:
            async for line in recv:
                yield sse(line)

    return StreamingResponse(gen(), media_type="text/event-stream")


async def mcp_delete(request: Request) -> Response:
    s = sessions.pop(request.headers.get("mcp-session-id", ""), None)
    if s is None:
        return Response(status_code=404)
    if s.get_stream:
        await s.get_stream.aclose()
    TG.start_soon(s.stop)
    return Response(status_code=200)


async def sse_get(request: Request) -> Response:
    s = Session()
    s.legacy = True
    await s.start(TG)
    sessions[s.id] = s
    send, recv = anyio.create_memory_object_stream[str](100)
    s.get_stream = send

    async def gen():
        try:
            yield sse(f"/message?sessionId={s.id}", "endpoint")
            async with recv:
                async for line in recv:
                    yield sse(line)
        finally:
            sessions.pop(s.id, None)
            TG.start_soon(s.stop)

    return StreamingResponse(gen(), media_type="text/event-stream")


async def sse_post(request: Request) -> Response:
    s = sessions.get(request.query_params.get("sessionId", ""))
    if s is None:
        return Response(status_code=404)
    await s.write(await request.body())  # everything goes on the one GET stream (get_stream)
    return Response("Accepted", status_code=202)


app = Starlette(
    routes=[
        Route("/mcp", mcp_post, methods=["POST"]),
        Route("/mcp", mcp_get, methods=["GET"]),
        Route("/mcp", mcp_delete, methods=["DELETE"]),
        Route("/sse", sse_get, methods=["GET"]),
        Route("/message", sse_post, methods=["POST"]),
    ]
)


async def main(port: int) -> None:
    global TG
    async with anyio.create_task_group() as tg:
        TG = tg
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        print(f"mock_stdio_bridge on 127.0.0.1:{port}: {COMMAND}", file=sys.stderr, flush=True)
        await server.serve()
        for s in list(sessions.values()):
            await s.stop()
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    COMMAND[:] = shlex.split(sys.argv[2])
    TO_GET = "--to-get" in sys.argv[3:]
    anyio.run(main, int(sys.argv[1]))
