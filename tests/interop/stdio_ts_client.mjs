#!/usr/bin/env node
// Full-feature MCP session(s) with the official TypeScript SDK client, for the router's
// stdio-bridge tests (mcp-router --stdio "<command>"), also usable against any HTTP MCP server.
//
//   node stdio_ts_client.mjs <base-url> <streamable|sse> [everything|fastmcp]
//                            [--sessions N] [--expect-shared] [--timeout SECONDS]
//
// streamable: StreamableHTTPClientTransport on <base-url>/mcp
// sse:        SSEClientTransport (legacy HTTP+SSE) on <base-url>/sse
// server kind: which server sits behind the URL (default: guessed from serverInfo.name;
//   "mcp-router-fastmcp" -> fastmcp, anything else -> everything). Given explicitly, it
//   must match serverInfo.name.
//
// Default (one session): initialize, tools/list, tools/call echo, resources/list +
// resources/read (static) + resources/templates/list + resources/read (templated),
// prompts/list + prompts/get (with an argument), a tool that sends notifications/progress
// (asserts >= 1 reached the progress callback), a sampling round trip (server ->
// sampling/createMessage -> our handler answers SAMPLE_TEXT -> tool result contains it),
// and for fastmcp whoami + counter_incr; then close (streamable: DELETE via
// terminateSession, asserting 2xx/405).
//
// --sessions N (N >= 2): N concurrent sessions instead. All are opened first, then each
// session i (1-based) calls counter_incr i times (fastmcp) while the others are open, and
// whoami. Per-session bridge (default): asserts session i's last counter is exactly i and
// all pids differ. --expect-shared: asserts one pid for all sessions and that no counter
// value was seen twice (one shared counter). For everything: echo in each session and
// distinct session ids.
//
// Stdout: one JSON line per check, {"check":"<name>","ok":true,...}, and last a summary
// {"check":"all","ok":true,"sdk":"ts","mode":...,"server":...,"checks":<n>,"sessionId":...}.
// On failure: {"check":"<name>","ok":false,"error":"..."} then
// {"check":"all","ok":false,"error":"..."}, exit status 1 (also on the hard timeout,
// default 60 s).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const SDK = "ts";
const ECHO_MESSAGE = "hello-from-ts-stdio";
const SAMPLE_TEXT = "sampled-answer-from-ts-client-7391";
const FASTMCP_NAME = "mcp-router-fastmcp";

// Tool / resource / prompt names per server, first match wins (server-everything renamed
// its tools in 2025: sampleLLM -> trigger-sampling-request, longRunningOperation ->
// trigger-long-running-operation).
const NAMES = {
  everything: {
    echo: ["echo"],
    progress: ["trigger-long-running-operation", "longRunningOperation"],
    sampling: ["trigger-sampling-request", "sampleLLM"],
    prompt: ["args-prompt", "complex_prompt"],
  },
  fastmcp: {
    echo: ["echo"],
    progress: ["progress_steps"],
    sampling: ["sample"],
    prompt: ["greet"],
  },
};

let checks = 0;
let finished = false;
let lastCheck = "setup";

function line(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function ok(check, extra = {}) {
  checks++;
  line({ check, ok: true, ...extra });
}

function errText(err) {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

function fail(err) {
  if (finished) return;
  finished = true;
  const error = errText(err);
  line({ check: lastCheck, ok: false, error });
  line({ check: "all", ok: false, sdk: SDK, error: `${lastCheck}: ${error}` });
  process.exit(1);
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function step(name, fn) {
  lastCheck = name;
  return await fn();
}

function parseArgs(argv) {
  const pos = [];
  let timeout = 60;
  let sessions = 1;
  let expectShared = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--timeout") {
      timeout = Number(argv[++i]);
      if (!(timeout > 0)) throw new Error("bad value for --timeout");
    } else if (a === "--sessions") {
      sessions = Number(argv[++i]);
      if (!Number.isInteger(sessions) || sessions < 1) throw new Error("bad value for --sessions");
    } else if (a === "--expect-shared") {
      expectShared = true;
    } else pos.push(a);
  }
  const usage =
    "usage: stdio_ts_client.mjs <base-url> <streamable|sse> [everything|fastmcp] [--sessions N] [--expect-shared] [--timeout S]";
  if (pos.length < 2 || pos.length > 3 || !["streamable", "sse"].includes(pos[1])) throw new Error(usage);
  if (pos[2] !== undefined && !(pos[2] in NAMES)) throw new Error(usage);
  return { base: pos[0].replace(/\/+$/, ""), mode: pos[1], kind: pos[2], timeout, sessions, expectShared };
}

function texts(result) {
  return (result.content ?? []).filter((c) => c.type === "text").map((c) => c.text);
}

function firstText(result, what) {
  if (result.isError) throw new Error(`${what} returned isError: ${JSON.stringify(result)}`);
  const t = texts(result);
  if (t.length === 0) throw new Error(`${what} returned no text content: ${JSON.stringify(result)}`);
  return t.join("\n");
}

function pick(available, candidates, what) {
  const name = candidates.find((c) => available.includes(c));
  if (!name) throw new Error(`no ${what} tool/prompt among ${JSON.stringify(candidates)}; have ${JSON.stringify(available)}`);
  return name;
}

// One connected session: client, transport, and what we observed about it.
async function openSession(base, mode, label) {
  const obs = { deleteStatus: null, samplingRequests: [] };
  // Wrap fetch to see the DELETE's status on the wire (terminateSession hides it).
  const fetchSpy = async (url, init) => {
    const res = await fetch(url, init);
    if (init?.method === "DELETE") obs.deleteStatus = res.status;
    return res;
  };
  const transport =
    mode === "streamable"
      ? new StreamableHTTPClientTransport(new URL(`${base}/mcp`), { fetch: fetchSpy })
      : new SSEClientTransport(new URL(`${base}/sse`));
  const client = new Client(
    { name: `mcp-router-interop-ts-${label}`, version: "0.0.0" },
    { capabilities: { sampling: {} } },
  );
  client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
    obs.samplingRequests.push(req.params);
    return { role: "assistant", model: "interop-fake-model", stopReason: "endTurn", content: { type: "text", text: SAMPLE_TEXT } };
  });
  await client.connect(transport); // initialize + notifications/initialized
  const sessionId =
    mode === "streamable"
      ? transport.sessionId ?? null
      : transport._endpoint?.searchParams.get("sessionId") ?? transport._endpoint?.searchParams.get("session_id") ?? null;
  return { client, transport, obs, sessionId, endpoint: mode === "sse" ? transport._endpoint?.href ?? null : `${base}/mcp` };
}

async function closeSession(s, mode) {
  if (mode === "streamable") {
    await s.transport.terminateSession(); // DELETE /mcp; throws unless 2xx or 405
    assert(s.obs.deleteStatus !== null, "terminateSession sent no DELETE");
  }
  await s.client.close();
  return s.obs.deleteStatus;
}

function serverKind(s, given) {
  const name = s.client.getServerVersion()?.name ?? "";
  const guessed = name === FASTMCP_NAME ? "fastmcp" : "everything";
  if (given && given !== guessed) throw new Error(`server kind ${given} given, but serverInfo.name is ${JSON.stringify(name)}`);
  return given ?? guessed;
}

// tools/list; server-everything registers its sampling tool only after
// notifications/initialized, so re-list a few times if it is not there yet.
async function listTools(client, want) {
  let relisted = 0;
  for (;;) {
    const { tools } = await client.listTools();
    const names = tools.map((t) => t.name);
    if (want.every((cands) => cands.some((c) => names.includes(c))) || relisted >= 10) return { names, relisted };
    relisted++;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function singleSession(base, mode, givenKind) {
  const s = await step("initialize", () => openSession(base, mode, "1"));
  const kind = serverKind(s, givenKind);
  const names = NAMES[kind];
  const c = s.client;
  ok("initialize", {
    server: c.getServerVersion()?.name,
    kind,
    protocolVersion: s.transport.protocolVersion ?? s.transport._protocolVersion ?? null,
    sessionId: s.sessionId,
    endpoint: s.endpoint,
  });

  const { names: tools, relisted } = await step("tools/list", () => listTools(c, [names.echo, names.progress, names.sampling]));
  const t = {
    echo: pick(tools, names.echo, "echo"),
    progress: pick(tools, names.progress, "progress"),
    sampling: pick(tools, names.sampling, "sampling"),
  };
  ok("tools/list", { tools: tools.length, relisted, using: t });

  await step("tools/call", async () => {
    const text = firstText(await c.callTool({ name: t.echo, arguments: { message: ECHO_MESSAGE } }), t.echo);
    assert(text.includes(ECHO_MESSAGE), `echo answered ${JSON.stringify(text)}`);
    ok("tools/call", { tool: t.echo, text });
  });

  await step("resources", async () => {
    const { resources } = await c.listResources();
    assert(resources.length > 0, "resources/list is empty");
    const { resourceTemplates } = await c.listResourceTemplates();
    let staticUri, staticWant, tmpl, tmplUri, tmplWant;
    if (kind === "fastmcp") {
      staticUri = "info://server";
      staticWant = FASTMCP_NAME;
      tmpl = "greeting://{name}";
      tmplUri = "greeting://ts-client";
      tmplWant = "Hello, ts-client!";
    } else {
      staticUri = resources[0].uri;
      staticWant = null; // any non-empty content
      tmpl = "demo://resource/dynamic/text/{resourceId}";
      tmplUri = "demo://resource/dynamic/text/1";
      tmplWant = "Resource 1";
    }
    assert(resources.some((r) => r.uri === staticUri), `resources/list lacks ${staticUri}: ${JSON.stringify(resources.map((r) => r.uri))}`);
    assert(
      resourceTemplates.some((r) => r.uriTemplate === tmpl),
      `resources/templates/list lacks ${tmpl}: ${JSON.stringify(resourceTemplates.map((r) => r.uriTemplate))}`,
    );
    const read1 = await c.readResource({ uri: staticUri });
    const body1 = read1.contents?.[0]?.text ?? read1.contents?.[0]?.blob ?? "";
    assert(body1.length > 0, `resources/read ${staticUri} empty: ${JSON.stringify(read1)}`);
    if (staticWant) assert(body1.includes(staticWant), `resources/read ${staticUri}: ${JSON.stringify(body1)}`);
    const read2 = await c.readResource({ uri: tmplUri });
    const body2 = read2.contents?.[0]?.text ?? "";
    assert(body2.includes(tmplWant), `resources/read ${tmplUri}: ${JSON.stringify(read2)}`);
    ok("resources", { resources: resources.length, templates: resourceTemplates.length, read: staticUri, readTemplate: tmplUri, text: body2 });
  });

  await step("prompts", async () => {
    const { prompts } = await c.listPrompts();
    const name = pick(prompts.map((p) => p.name), names.prompt, "prompt");
    const [args, want] = kind === "fastmcp" ? [{ name: "ts-client" }, "Please greet ts-client"] : [{ city: "Paris" }, "Paris"];
    const got = await c.getPrompt({ name, arguments: args });
    const text = (got.messages ?? []).map((m) => m.content?.text ?? "").join("\n");
    assert(text.includes(want), `prompts/get ${name}: ${JSON.stringify(got)}`);
    ok("prompts", { prompts: prompts.length, prompt: name, text });
  });

  await step("progress", async () => {
    const seen = [];
    const args = kind === "fastmcp" ? { steps: 3, delay: 0.05 } : { duration: 0.6, steps: 3 };
    const result = await c.callTool({ name: t.progress, arguments: args }, undefined, {
      onprogress: (p) => seen.push(p),
      timeout: 30000,
    });
    const text = firstText(result, t.progress);
    assert(seen.length >= 1, `no progress notification reached the callback (result ${JSON.stringify(text)})`);
    ok("progress", { tool: t.progress, notifications: seen.length, last: seen[seen.length - 1], text });
  });

  await step("sampling", async () => {
    const args = kind === "fastmcp" ? { prompt: "say something" } : { prompt: "say something", maxTokens: 20 };
    const text = firstText(await c.callTool({ name: t.sampling, arguments: args }, undefined, { timeout: 30000 }), t.sampling);
    assert(s.obs.samplingRequests.length === 1, `sampling handler called ${s.obs.samplingRequests.length} times`);
    assert(text.includes(SAMPLE_TEXT), `sampling tool result lacks ${SAMPLE_TEXT}: ${JSON.stringify(text)}`);
    ok("sampling", { tool: t.sampling, text: text.slice(0, 200) });
  });

  if (kind === "fastmcp") {
    await step("state", async () => {
      const pid = firstText(await c.callTool({ name: "whoami", arguments: {} }), "whoami");
      const n1 = Number(firstText(await c.callTool({ name: "counter_incr", arguments: {} }), "counter_incr"));
      const n2 = Number(firstText(await c.callTool({ name: "counter_incr", arguments: {} }), "counter_incr"));
      assert(Number.isInteger(n1) && n2 === n1 + 1, `counter_incr gave ${n1} then ${n2}`);
      ok("state", { pid: Number(pid), counter: n2 });
    });
  }

  await step("close", async () => {
    const status = await closeSession(s, mode);
    ok("close", { delete: mode === "streamable" ? status : "n/a (sse: GET stream closed)" });
  });
  return { kind, sessionId: s.sessionId };
}

async function manySessions(base, mode, givenKind, n, expectShared) {
  const sessions = await step("initialize", () =>
    Promise.all(Array.from({ length: n }, (_, i) => openSession(base, mode, String(i + 1)))),
  );
  const kind = serverKind(sessions[0], givenKind);
  const ids = sessions.map((s) => s.sessionId);
  assert(new Set(ids).size === n, `session ids not distinct: ${JSON.stringify(ids)}`);
  ok("initialize", { sessions: n, kind, sessionIds: ids });

  if (kind === "fastmcp") {
    await step("isolation", async () => {
      // Session i (1-based) increments i times; all sessions run at once.
      const per = await Promise.all(
        sessions.map(async (s, i) => {
          const pid = Number(firstText(await s.client.callTool({ name: "whoami", arguments: {} }), "whoami"));
          const values = [];
          for (let k = 0; k <= i; k++) {
            values.push(Number(firstText(await s.client.callTool({ name: "counter_incr", arguments: {} }), "counter_incr")));
          }
          return { pid, values };
        }),
      );
      const pids = per.map((p) => p.pid);
      const finals = per.map((p) => p.values[p.values.length - 1]);
      if (expectShared) {
        assert(new Set(pids).size === 1, `expected one shared server process, got pids ${JSON.stringify(pids)}`);
        const all = per.flatMap((p) => p.values);
        assert(new Set(all).size === all.length, `a counter value was seen twice: ${JSON.stringify(per)}`);
      } else {
        assert(new Set(pids).size === n, `sessions share a server process: pids ${JSON.stringify(pids)}`);
        finals.forEach((v, i) =>
          assert(
            JSON.stringify(per[i].values) === JSON.stringify(Array.from({ length: i + 1 }, (_, k) => k + 1)),
            `session ${i + 1} saw counter values ${JSON.stringify(per[i].values)}, expected 1..${i + 1}`,
          ),
        );
      }
      ok("isolation", { shared: expectShared, pids, finals });
    });
  } else {
    await step("echo", async () => {
      const got = await Promise.all(
        sessions.map(async (s, i) =>
          firstText(await s.client.callTool({ name: "echo", arguments: { message: `${ECHO_MESSAGE}-${i + 1}` } }), "echo"),
        ),
      );
      got.forEach((t, i) => assert(t.includes(`${ECHO_MESSAGE}-${i + 1}`), `session ${i + 1} echo: ${t}`));
      ok("echo", { sessions: n });
    });
  }

  await step("close", async () => {
    const statuses = await Promise.all(sessions.map((s) => closeSession(s, mode)));
    ok("close", { delete: mode === "streamable" ? statuses : "n/a (sse)" });
  });
  return { kind, sessionId: ids };
}

async function main() {
  const { base, mode, kind, timeout, sessions, expectShared } = parseArgs(process.argv.slice(2));
  const timer = setTimeout(() => fail(new Error(`timeout after ${timeout} s`)), timeout * 1000);
  const r =
    sessions === 1
      ? await singleSession(base, mode, kind)
      : await manySessions(base, mode, kind, sessions, expectShared);
  clearTimeout(timer);
  finished = true;
  line({ check: "all", ok: true, sdk: SDK, mode, server: r.kind, sessions, checks, sessionId: r.sessionId });
}

main().catch(fail);
