#!/usr/bin/env node
// One Streamable HTTP session with the official TypeScript SDK client, held open across
// a backend's death, for the router's failover test (suite/tests/interop.rs).
//
//   node ts_failover_client.mjs <base-url> [--timeout SECONDS]
//
// initialize, tools/call echo, then prints `READY <session id>` and waits for one line
// on stdin (the test kills a backend meanwhile); then tools/call echo again and DELETE.
// Every HTTP request the SDK makes goes through a wrapped fetch that counts the
// `initialize` requests sent and the statuses received. Prints exactly one JSON line:
//   {"ok":true,"before":<id>,"after":<id>,"initializes":N,"statuses":[...],"echo":...}
// or {"ok":false,"error":"..."} with exit status 1 (also on the timeout, default 60 s).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { createInterface } from "node:readline";

let printed = false;
function emit(obj, code) {
  if (!printed) {
    printed = true;
    process.stdout.write(JSON.stringify(obj) + "\n");
  }
  process.exitCode = code;
}
function fail(err) {
  const msg = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  emit({ ok: false, error: msg }, 1);
  process.exit(1);
}

const args = process.argv.slice(2);
const base = (args[0] ?? "").replace(/\/+$/, "");
const ti = args.indexOf("--timeout");
const timeout = ti >= 0 ? Number(args[ti + 1]) : 60;
if (!base) fail(new Error("usage: ts_failover_client.mjs <base-url> [--timeout SECONDS]"));

let initializes = 0;
const statuses = [];
const countingFetch = async (url, init) => {
  const body = typeof init?.body === "string" ? init.body : "";
  if (body.includes('"method":"initialize"')) initializes++;
  const res = await fetch(url, init);
  statuses.push(`${init?.method ?? "GET"} ${res.status}`);
  return res;
};

function echoText(result) {
  const block = (result.content ?? []).find((c) => c.type === "text");
  if (!block) throw new Error(`echo returned no text content: ${JSON.stringify(result)}`);
  return block.text;
}

async function call(client, message) {
  const result = await client.callTool({ name: "echo", arguments: { message } });
  if (result.isError) throw new Error(`echo failed: ${JSON.stringify(result)}`);
  const text = echoText(result);
  if (!text.includes(message)) throw new Error(`unexpected echo text: ${text}`);
  return text;
}

async function main() {
  const timer = setTimeout(() => fail(new Error(`timeout after ${timeout} s`)), timeout * 1000);
  const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`), {
    fetch: countingFetch,
  });
  const client = new Client({ name: "mcp-router-failover-ts", version: "0.0.0" });
  client.onerror = () => {}; // a GET stream cut with its backend is expected
  await client.connect(transport);
  const before = transport.sessionId ?? null;
  await call(client, "before-the-kill");
  process.stdout.write(`READY ${before}\n`);
  const rl = createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once("line", resolve));
  rl.close();
  const echo = await call(client, "after-the-kill");
  const after = transport.sessionId ?? null;
  await transport.terminateSession();
  await client.close();
  clearTimeout(timer);
  emit({ ok: true, before, after, initializes, statuses, echo }, 0);
}

main().catch(fail);
