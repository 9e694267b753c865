#!/usr/bin/env node
// One MCP session with the official TypeScript SDK client, for interop tests.
//
//   node ts_client.mjs <base-url> <streamable|sse> [--rounds N] [--timeout SECONDS] [--no-delete]
//
// streamable: StreamableHTTPClientTransport on <base-url>/mcp
// sse:        SSEClientTransport (legacy HTTP+SSE) on <base-url>/sse
//
// Steps: initialize, tools/list, N x tools/call echo {message: "hello-from-ts"},
// then (streamable) DELETE the session with transport.terminateSession(), and close.
// --no-delete: close without the DELETE, as a client that just stops (the session is
// left for the server's or the router's idle expiry).
// Prints exactly one JSON line on stdout:
//   {"ok":true,"sdk":"ts","mode":...,"tools":<count>,"echo":"<text>","sessionId":"<id or null>"}
// or {"ok":false,"error":"..."} with exit status 1 (also on the hard timeout, default 30 s).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";

const MESSAGE = "hello-from-ts";
let printed = false;

function emit(obj, code) {
  if (!printed) {
    printed = true;
    process.stdout.write(JSON.stringify(obj) + "\n");
  }
  process.exitCode = code;
  return code;
}

function fail(err) {
  const msg = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  emit({ ok: false, error: msg }, 1);
  process.exit(1);
}

function parseArgs(argv) {
  const pos = [];
  let rounds = 1;
  let timeout = 30;
  let noDelete = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--rounds" || a === "--timeout") {
      const v = Number(argv[++i]);
      if (!Number.isFinite(v) || v < (a === "--rounds" ? 1 : 0.001)) throw new Error(`bad value for ${a}`);
      if (a === "--rounds") rounds = Math.floor(v);
      else timeout = v;
    } else if (a === "--no-delete") noDelete = true;
    else pos.push(a);
  }
  if (pos.length !== 2 || !["streamable", "sse"].includes(pos[1])) {
    throw new Error("usage: ts_client.mjs <base-url> <streamable|sse> [--rounds N] [--timeout SECONDS] [--no-delete]");
  }
  return { base: pos[0].replace(/\/+$/, ""), mode: pos[1], rounds, timeout, noDelete };
}

function echoText(result) {
  const block = (result.content ?? []).find((c) => c.type === "text");
  if (!block) throw new Error(`echo returned no text content: ${JSON.stringify(result)}`);
  return block.text;
}

async function main() {
  const { base, mode, rounds, timeout, noDelete } = parseArgs(process.argv.slice(2));
  const timer = setTimeout(() => fail(new Error(`timeout after ${timeout} s`)), timeout * 1000);

  const transport =
    mode === "streamable"
      ? new StreamableHTTPClientTransport(new URL(`${base}/mcp`))
      : new SSEClientTransport(new URL(`${base}/sse`));
  const client = new Client({ name: "mcp-router-interop-ts", version: "0.0.0" });

  await client.connect(transport); // initialize + notifications/initialized
  // Streamable: the Mcp-Session-Id the server assigned. SSE: SSEClientTransport has no
  // public session id, so take the query parameter of the POST URI from the server's
  // `endpoint` event (private field _endpoint; `sessionId` for TS servers, `session_id`
  // for Python ones).
  const sessionId =
    mode === "streamable"
      ? transport.sessionId ?? null
      : transport._endpoint?.searchParams.get("sessionId") ??
        transport._endpoint?.searchParams.get("session_id") ??
        null;

  const { tools } = await client.listTools();
  if (!tools.some((t) => t.name === "echo")) throw new Error("server has no echo tool");

  let echo = null;
  for (let i = 0; i < rounds; i++) {
    const result = await client.callTool({ name: "echo", arguments: { message: MESSAGE } });
    if (result.isError) throw new Error(`echo failed: ${JSON.stringify(result)}`);
    echo = echoText(result);
    if (!echo.includes(MESSAGE)) throw new Error(`unexpected echo text: ${echo}`);
  }

  if (mode === "streamable" && !noDelete) await transport.terminateSession(); // DELETE /mcp
  await client.close(); // no request: aborts the transport's streams
  clearTimeout(timer);
  emit({ ok: true, sdk: "ts", mode, tools: tools.length, echo, sessionId }, 0);
}

main().catch(fail);
