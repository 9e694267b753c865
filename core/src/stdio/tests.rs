//! The stdio bridge against virtual time and scripted children.

use super::*;
use serde_json::json;

struct H {
    /// Core's bridge simulator: the contract checks run after every call.
    sim: crate::sim::BridgeSim,
    seed: u8,
    /// The client the next requests come from.
    client: crate::ClientId,
}

fn cfg(mode: ChildMode) -> BridgeConfig {
    BridgeConfig {
        mode,
        max_children: 4,
        idle_ttl: Duration::from_secs(60),
        // (the tests of the unattached timeout set their own)
        unattached_timeout: Duration::from_secs(3600),
        stream_grace: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        max_queue: 3,
        ..BridgeConfig::default()
    }
}

/// Outputs of one step, with helpers to pick them apart.
#[derive(Debug)]
struct Outs(Vec<BridgeOutput>);

impl Outs {
    fn respond(&self, x: ExchangeId) -> (u16, Vec<(&'static str, String)>, Value) {
        for o in &self.0 {
            if let BridgeOutput::Respond {
                exchange,
                status,
                headers,
                body,
            } = o
            {
                if *exchange == x {
                    let v = if body.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(body).unwrap()
                    };
                    return (*status, headers.clone(), v);
                }
            }
        }
        panic!("no response for {x:?} in {:?}", self.0)
    }
    fn to_child(&self) -> Vec<(ChildId, Value)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                BridgeOutput::ToChild { child, line } => {
                    assert!(line.ends_with(b"\n"));
                    Some((*child, serde_json::from_slice(line).unwrap()))
                }
                _ => None,
            })
            .collect()
    }
    fn spawned(&self) -> Vec<ChildId> {
        self.0
            .iter()
            .filter_map(|o| match o {
                BridgeOutput::Spawn { child, .. } => Some(*child),
                _ => None,
            })
            .collect()
    }
    fn killed(&self) -> Vec<ChildId> {
        let kill = |o: &BridgeOutput| match o {
            BridgeOutput::Kill { child } => Some(*child),
            _ => None,
        };
        self.0.iter().filter_map(kill).collect()
    }
    /// (event id, event type, JSON data) of the events sent to `x`.
    fn events(&self, x: ExchangeId) -> Vec<(Option<String>, String, Value)> {
        let mut v = Vec::new();
        for o in &self.0 {
            if let BridgeOutput::Event { exchange, data } = o {
                if *exchange != x {
                    continue;
                }
                let text = std::str::from_utf8(data).unwrap();
                assert!(text.ends_with("\n\n"), "{text:?}");
                let (mut id, mut ev, mut d) = (None, String::new(), String::new());
                for l in text.lines() {
                    if let Some(r) = l.strip_prefix("id: ") {
                        id = Some(r.to_string());
                    } else if let Some(r) = l.strip_prefix("event: ") {
                        ev = r.to_string();
                    } else if let Some(r) = l.strip_prefix("data: ") {
                        d.push_str(r);
                    }
                }
                let j = serde_json::from_str(&d).unwrap_or(Value::String(d));
                v.push((id, ev, j));
            }
        }
        v
    }
    fn started(&self, x: ExchangeId) -> bool {
        self.0
            .iter()
            .any(|o| matches!(o, BridgeOutput::StartStream { exchange, .. } if *exchange == x))
    }
    fn ended(&self, x: ExchangeId) -> bool {
        self.0
            .iter()
            .any(|o| matches!(o, BridgeOutput::EndStream { exchange } if *exchange == x))
    }
    fn session_ended(&self) -> Vec<EndReason> {
        self.0
            .iter()
            .filter_map(|o| match o {
                BridgeOutput::Log(BridgeEvent::SessionEnded { reason, .. }) => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

impl H {
    /// The id of a live session other than `s1`.
    fn other_session(&self, s1: &str) -> String {
        let keys = &self.sim.bridge.sessions;
        keys.keys().find(|k| k.as_str() != s1).unwrap().to_string()
    }

    fn new(mode: ChildMode) -> H {
        H::with(cfg(mode))
    }
    fn with(cfg: BridgeConfig) -> H {
        H {
            sim: crate::sim::BridgeSim::new(cfg),
            seed: 0,
            client: crate::ClientId(0),
        }
    }
    fn req(
        &mut self,
        method: Method,
        path: &str,
        sid: Option<&str>,
        sse: bool,
        body: &str,
    ) -> (ExchangeId, Outs) {
        self.seed = self.seed.wrapping_add(1);
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q.as_bytes())),
            None => (path, None),
        };
        let accept: &[u8] = if sse {
            b"application/json, text/event-stream"
        } else {
            b"application/json"
        };
        let r = Request {
            method,
            path: path.as_bytes(),
            query,
            session_id: sid.map(str::as_bytes),
            accept: Some(accept),
            body: body.as_bytes(),
            client: self.client,
        };
        let (x, out) = self.sim.request(&r, &[self.seed; 32]);
        (x, Outs(out))
    }
    fn post(&mut self, sid: Option<&str>, sse: bool, v: Value) -> (ExchangeId, Outs) {
        self.req(Method::Post, "/mcp", sid, sse, &v.to_string())
    }
    /// initialize (JSON) and the child's answer; returns (session, child).
    fn init(&mut self, id: Value) -> (String, ChildId, Outs) {
        let (x, o) = self.post(
            None,
            false,
            json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{}}),
        );
        let sent = o.to_child();
        let mut all = o.0;
        if let Some((child, m)) = sent.first() {
            let rid = m["id"].clone();
            all.extend(
                self.line(
                    *child,
                    json!({"jsonrpc":"2.0","id":rid,"result":{"serverInfo":{"name":"t"}}}),
                )
                .0,
            );
        }
        let o = Outs(all);
        let (status, headers, body) = o.respond(x);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], id);
        assert_eq!(body["result"]["serverInfo"]["name"], "t");
        let sid = headers
            .iter()
            .find(|(k, _)| *k == "Mcp-Session-Id")
            .unwrap()
            .1
            .clone();
        let child = self.sim.bridge.sessions[sid.as_str()].child;
        (sid, child, o)
    }
    fn line(&mut self, c: ChildId, v: Value) -> Outs {
        Outs(self.sim.child_line(c, v.to_string().as_bytes()))
    }
    fn advance(&mut self, d: Duration) -> Outs {
        Outs(self.sim.advance(d))
    }
}

fn req(id: Value, method: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":method,"params":{}})
}

#[test]
fn initialize_spawns_a_child_and_mints_a_visible_ascii_id() {
    let mut h = H::new(ChildMode::PerSession);
    let (x, o) = h.post(None, false, req(json!("init-1"), "initialize"));
    assert_eq!(o.spawned().len(), 1);
    let sent = o.to_child();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1["method"], "initialize");
    // the child sees a router id, not the client's
    assert!(sent[0].1["id"].is_u64(), "{}", sent[0].1);
    let o = h.line(
        sent[0].0,
        json!({"jsonrpc":"2.0","id":sent[0].1["id"],"result":{"ok":1}}),
    );
    let (status, headers, body) = o.respond(x);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"jsonrpc":"2.0","id":"init-1","result":{"ok":1}})
    );
    let sid = &headers[0].1;
    assert_eq!(headers[0].0, "Mcp-Session-Id");
    assert_eq!(sid.len(), 64);
    assert!(sid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    assert_eq!(sid, &"01".repeat(32));
    // a second session gets a different id and its own child
    let (sid2, c2, _) = h.init(json!(1));
    assert_ne!(&sid2, sid);
    assert_ne!(c2, sent[0].0);
    assert_eq!(h.sim.bridge.child_count(), 2);
}

#[test]
fn session_errors_have_the_statuses_clients_expect() {
    let mut h = H::new(ChildMode::PerSession);
    // missing session on a non-initialize request: 400
    let (x, o) = h.post(None, false, req(json!(5), "tools/list"));
    let (s, _, b) = o.respond(x);
    assert_eq!((s, b["error"]["code"].as_i64()), (400, Some(-32000)));
    assert_eq!(b["id"], 5);
    // unknown session: 404 -32001 echoing the id
    let (x, o) = h.post(Some("nope"), false, req(json!("q"), "tools/list"));
    assert_eq!(
        o.respond(x),
        (
            404,
            vec![],
            json!({"jsonrpc":"2.0","id":"q","error":{"code":-32001,"message":"Session not found"}})
        )
    );
    // invalid session id, bad JSON, a batch, not JSON-RPC
    let (x, o) = h.post(Some("a b"), false, req(json!(1), "tools/list"));
    assert_eq!(o.respond(x).0, 400);
    let (x, o) = h.req(Method::Post, "/mcp", None, false, "{not json");
    assert_eq!(o.respond(x).2["error"]["code"], -32700);
    let (x, o) = h.req(Method::Post, "/mcp", None, false, "[]");
    assert_eq!(o.respond(x).0, 400);
    let (x, o) = h.req(
        Method::Post,
        "/mcp",
        None,
        false,
        r#"{"jsonrpc":"1.0","id":1}"#,
    );
    assert_eq!(o.respond(x).2["error"]["code"], -32600);
    // GET and DELETE on unknown sessions, other methods and paths
    let (x, o) = h.req(Method::Get, "/mcp", Some("nope"), true, "");
    assert_eq!(o.respond(x).0, 404);
    let (x, o) = h.req(Method::Delete, "/mcp", None, false, "");
    assert_eq!(o.respond(x).0, 400);
    let (x, o) = h.req(Method::Put, "/mcp", None, false, "");
    let (s, hd, _) = o.respond(x);
    assert_eq!(s, 405);
    assert_eq!(hd[0].0, "Allow");
    let (x, o) = h.req(Method::Get, "/elsewhere", None, false, "");
    assert_eq!(o.respond(x).0, 404);
    assert_eq!(h.sim.bridge.session_count(), 0);
    assert_eq!(h.sim.bridge.child_count(), 0);
}

#[test]
fn hostile_bodies_never_panic() {
    let mut h = H::new(ChildMode::Shared);
    let (sid, c, _) = h.init(json!(1));
    let bodies = [
        "",
        "null",
        "1",
        "\"s\"",
        "{}",
        r#"{"jsonrpc":"2.0"}"#,
        r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":[1]}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":5}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1,2]}"#,
        "\u{0}\u{1}\u{ff}",
    ];
    for b in bodies {
        for sse in [false, true] {
            let (x, o) = h.req(Method::Post, "/mcp", Some(&sid), sse, b);
            // every request gets an answer, or is forwarded (its answer comes later)
            assert!(
                o.0.iter().any(|o| matches!(o,
                    BridgeOutput::Respond { exchange, .. } | BridgeOutput::StartStream { exchange, .. }
                    if *exchange == x)
                    || matches!(o, BridgeOutput::ToChild { .. })),
                "{b:?}: {o:?}"
            );
        }
    }
    for l in [
        "",
        "   ",
        "{}",
        "[",
        "{\"jsonrpc\":\"2.0\",\"id\":99,\"result\":1}",
    ] {
        let _ = h.sim.child_line(c, l.as_bytes());
    }
    assert!(h.sim.child_line(ChildId(999), b"garbage").is_empty());
    assert!(h.sim.exchange_closed(ExchangeId(12345)).is_empty());
    assert!(h.sim.stream_overflow(ExchangeId(12345)).is_empty());
    assert!(h.sim.child_exit(ChildId(999), "x").is_empty());
}

#[test]
fn sse_post_carries_progress_then_the_response_with_event_ids() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (x, o) = h.post(
        Some(&sid),
        true,
        json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","_meta":{"progressToken":"tok"}}}),
    );
    assert!(o.started(x));
    let sent = o.to_child();
    let rid = sent[0].1["id"].as_u64().unwrap();
    // the token is rewritten to the router id
    assert_eq!(sent[0].1["params"]["_meta"]["progressToken"], json!(rid));
    let o = h.line(
        c,
        json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":rid,"progress":1}}),
    );
    let ev = o.events(x);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1, "message");
    assert_eq!(ev[0].2["params"]["progressToken"], "tok");
    let o = h.line(c, json!({"jsonrpc":"2.0","id":rid,"result":{"done":true}}));
    let ev2 = o.events(x);
    assert_eq!(
        ev2[0].2,
        json!({"jsonrpc":"2.0","id":7,"result":{"done":true}})
    );
    let (a, b): (u64, u64) = (
        ev[0].0.as_ref().unwrap().parse().unwrap(),
        ev2[0].0.as_ref().unwrap().parse().unwrap(),
    );
    assert!(b > a);
    assert!(o.ended(x));
    // a late progress for the finished request is dropped, not misrouted
    let o = h.line(
        c,
        json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":rid,"progress":2}}),
    );
    assert!(o.events(x).is_empty());
}

#[test]
fn two_in_flight_requests_with_the_same_id_never_mix() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (x1, o1) = h.post(Some(&sid), false, req(json!(1), "a"));
    let (x2, o2) = h.post(Some(&sid), false, req(json!(1), "b"));
    let r1 = o1.to_child()[0].1["id"].clone();
    let r2 = o2.to_child()[0].1["id"].clone();
    assert_ne!(r1, r2);
    // answered out of order
    let o = h.line(c, json!({"jsonrpc":"2.0","id":r2,"result":"B"}));
    assert_eq!(
        o.respond(x2).2,
        json!({"jsonrpc":"2.0","id":1,"result":"B"})
    );
    let o = h.line(c, json!({"jsonrpc":"2.0","id":r1,"result":"A"}));
    assert_eq!(o.respond(x1).2["result"], "A");
}

#[test]
fn shared_mode_initializes_once_and_keeps_colliding_ids_apart() {
    let mut h = H::new(ChildMode::Shared);
    let (s1, c, o) = h.init(json!(1));
    assert_eq!(o.spawned().len(), 1);
    // notifications/initialized goes through once
    let (_, o) = h.post(
        Some(&s1),
        false,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(o.to_child().len(), 1);
    // the second session: no spawn, nothing written to the child, cached answer
    let (x, o) = h.post(None, true, req(json!(1), "initialize"));
    assert!(o.spawned().is_empty());
    assert!(o.to_child().is_empty());
    let ev = o.events(x);
    assert_eq!(ev[0].2["result"]["serverInfo"]["name"], "t");
    assert_eq!(ev[0].2["id"], 1);
    assert!(o.ended(x));
    let s2 = h.other_session(&s1);
    let (_, o) = h.post(
        Some(&s2),
        false,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert!(o.to_child().is_empty());
    assert_eq!(h.sim.bridge.child_count(), 1);
    // both sessions send id 2 at once
    let (x1, o1) = h.post(Some(&s1), false, req(json!(2), "tools/call"));
    let (x2, o2) = h.post(Some(&s2), false, req(json!(2), "tools/call"));
    let (c1, m1) = o1.to_child()[0].clone();
    let (c2, m2) = o2.to_child()[0].clone();
    assert_eq!((c1, c2), (c, c));
    assert_ne!(m1["id"], m2["id"]);
    let o = h.line(c, json!({"jsonrpc":"2.0","id":m2["id"],"result":"two"}));
    let (_, hd, b) = o.respond(x2);
    assert_eq!(b["result"], "two");
    assert_eq!(hd[0].1, s2);
    let o = h.line(c, json!({"jsonrpc":"2.0","id":m1["id"],"result":"one"}));
    assert_eq!(o.respond(x1).2["result"], "one");
    // a session ending does not kill the shared child; the last one does
    let (x, o) = h.req(Method::Delete, "/mcp", Some(&s1), false, "");
    assert_eq!(o.respond(x).0, 200);
    assert!(o.killed().is_empty());
    let (_, o) = h.req(Method::Delete, "/mcp", Some(&s2), false, "");
    assert_eq!(o.killed(), vec![c]);
    // and the next initialize spawns a fresh child
    let (_, c3, o) = h.init(json!(9));
    assert_eq!(o.spawned(), vec![c3]);
    assert_ne!(c3, c);
}

#[test]
fn shared_initialize_waits_for_the_first_one() {
    let mut h = H::new(ChildMode::Shared);
    let (x1, o1) = h.post(None, false, req(json!("a"), "initialize"));
    let (x2, o2) = h.post(None, false, req(json!("b"), "initialize"));
    assert_eq!(o1.to_child().len(), 1);
    assert!(o2.to_child().is_empty() && o2.spawned().is_empty());
    let (c, m) = o1.to_child()[0].clone();
    let o = h.line(c, json!({"jsonrpc":"2.0","id":m["id"],"result":{"v":1}}));
    assert_eq!(
        o.respond(x1).2,
        json!({"jsonrpc":"2.0","id":"a","result":{"v":1}})
    );
    assert_eq!(
        o.respond(x2).2,
        json!({"jsonrpc":"2.0","id":"b","result":{"v":1}})
    );
    assert_ne!(o.respond(x1).1, o.respond(x2).1);
}

#[test]
fn shared_server_requests_go_to_the_asking_session_and_only_its_answer_returns() {
    let mut h = H::new(ChildMode::Shared);
    let (s1, c, _) = h.init(json!(1));
    let (x, _) = h.post(None, false, req(json!(1), "initialize"));
    let _ = x;
    let s2 = h.other_session(&s1);
    let (g1, _) = h.req(Method::Get, "/mcp", Some(&s1), true, "");
    let (g2, _) = h.req(Method::Get, "/mcp", Some(&s2), true, "");
    // session 2 calls a tool (JSON response), during which the child asks for sampling
    let (_, o) = h.post(Some(&s2), false, req(json!(3), "tools/call"));
    let _ = o;
    let o = h.line(
        c,
        json!({"jsonrpc":"2.0","id":"srv-1","method":"sampling/createMessage","params":{}}),
    );
    assert!(o.events(g1).is_empty());
    assert_eq!(o.events(g2)[0].2["method"], "sampling/createMessage");
    // session 1 answering it is dropped; session 2's answer reaches the child
    let (x, o) = h.post(
        Some(&s1),
        false,
        json!({"jsonrpc":"2.0","id":"srv-1","result":{}}),
    );
    assert_eq!(o.respond(x).0, 202);
    assert!(o.to_child().is_empty());
    let (x, o) = h.post(
        Some(&s2),
        false,
        json!({"jsonrpc":"2.0","id":"srv-1","result":{"content":"hi"}}),
    );
    assert_eq!(o.respond(x).0, 202);
    assert_eq!(o.to_child()[0].1["result"]["content"], "hi");
    // a notification without a token reaches every session
    let o = h.line(
        c,
        json!({"jsonrpc":"2.0","method":"notifications/resources/list_changed"}),
    );
    assert_eq!(o.events(g1).len(), 1);
    assert_eq!(o.events(g2).len(), 1);
}

#[test]
fn get_stream_queue_and_conflict() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    // no stream yet: queued (bound 3, oldest dropped; a dropped request is refused)
    let o = h.line(c, json!({"jsonrpc":"2.0","id":"r0","method":"roots/list"}));
    assert!(o.to_child().is_empty());
    for i in 1..=3 {
        let o = h.line(
            c,
            json!({"jsonrpc":"2.0","method":"notifications/message","params":{"n":i}}),
        );
        if i == 3 {
            let refused = o.to_child();
            assert_eq!(refused.len(), 1);
            assert_eq!(refused[0].1["id"], "r0");
            assert_eq!(refused[0].1["error"]["code"], -32000);
        }
    }
    let (g, o) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    assert!(o.started(g));
    let ev = o.events(g);
    let ns: Vec<_> = ev.iter().map(|e| e.2["params"]["n"].clone()).collect();
    assert_eq!(ns, vec![json!(1), json!(2), json!(3)]);
    // a second GET: 409
    let (x, o) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    assert_eq!(o.respond(x).0, 409);
    // with a POST stream open, unsolicited messages go there; else to the GET stream
    let (p, _) = h.post(Some(&sid), true, req(json!(1), "tools/call"));
    let o = h.line(c, json!({"jsonrpc":"2.0","method":"notifications/message"}));
    assert_eq!((o.events(p).len(), o.events(g).len()), (1, 0));
    let _ = h.sim.exchange_closed(p);
    let o = h.line(c, json!({"jsonrpc":"2.0","method":"notifications/message"}));
    assert_eq!(o.events(g).len(), 1);
}

#[test]
fn child_cap_answers_503() {
    let mut h = H::new(ChildMode::PerSession);
    for i in 0..4 {
        h.init(json!(i));
    }
    let (x, o) = h.post(None, false, req(json!("five"), "initialize"));
    let (s, _, b) = o.respond(x);
    assert_eq!(s, 503);
    assert_eq!(b["id"], "five");
    assert_eq!(b["error"]["code"], -32000);
    assert!(o.spawned().is_empty());
    let (x, o) = h.req(Method::Get, "/sse", None, true, "");
    assert_eq!(o.respond(x).0, 503);
}

#[test]
fn delete_kills_and_forgets() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (g, _) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    let (x, o) = h.req(Method::Delete, "/mcp", Some(&sid), false, "");
    assert_eq!(o.respond(x).0, 200);
    assert_eq!(o.killed(), vec![c]);
    assert!(o.ended(g));
    assert_eq!(o.session_ended(), vec![EndReason::Delete]);
    let (x, o) = h.post(Some(&sid), false, req(json!(1), "tools/list"));
    assert_eq!(o.respond(x).0, 404);
    // the dead child's late output goes nowhere
    assert!(h
        .line(c, json!({"jsonrpc":"2.0","method":"x"}))
        .0
        .is_empty());
}

#[test]
fn idle_expiry_spares_sessions_with_an_open_stream() {
    let mut h = H::new(ChildMode::PerSession);
    let (idle, c1, _) = h.init(json!(0));
    let (busy, c2, _) = h.init(json!(0));
    let (_, _) = h.req(Method::Get, "/mcp", Some(&busy), true, "");
    assert!(h.sim.bridge.poll_timeout().unwrap() <= h.sim.now + Duration::from_secs(60));
    let o = h.advance(Duration::from_secs(59));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_secs(2));
    assert_eq!(o.killed(), vec![c1]);
    assert_eq!(o.session_ended(), vec![EndReason::IdleExpiry]);
    let (x, o) = h.post(Some(&idle), false, req(json!(1), "x"));
    assert_eq!(o.respond(x).0, 404);
    let o = h.advance(Duration::from_secs(600));
    assert!(o.killed().is_empty(), "{c2:?} has an open stream");
}

#[test]
fn lost_stream_ends_the_session_after_the_grace_unless_reopened() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (g, _) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    let mut o = h.sim.exchange_closed(g);
    o.extend(h.advance(Duration::from_secs(4)).0);
    let o = Outs(o);
    assert!(o.killed().is_empty());
    // reopened in time: the grace is cancelled
    let (g2, _) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    let o = h.advance(Duration::from_secs(10));
    assert!(o.killed().is_empty());
    let mut o = h.sim.exchange_closed(g2);
    o.extend(h.advance(Duration::from_secs(6)).0);
    let o = Outs(o);
    assert_eq!(o.killed(), vec![c]);
    assert_eq!(o.session_ended(), vec![EndReason::StreamLost]);
}

#[test]
fn garbage_from_the_child_ends_its_session_with_a_clear_error() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (g, _) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    let (x, _) = h.post(Some(&sid), false, req(json!(42), "tools/call"));
    let (p, _) = h.post(Some(&sid), true, req(json!(43), "tools/call"));
    let o = Outs(h.sim.child_line(c, b"Server started!"));
    let (s, _, b) = o.respond(x);
    assert_eq!(s, 200);
    assert_eq!(b["id"], 42);
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON-RPC"));
    let pe = o.events(p);
    assert_eq!(pe[0].2["id"], 43);
    assert!(o.ended(p));
    let ge = o.events(g);
    assert_eq!(ge[0].2["method"], "notifications/message");
    assert!(o.ended(g));
    assert_eq!(o.killed(), vec![c]);
    assert!(o.0.iter().any(|o| matches!(o,
        BridgeOutput::Log(BridgeEvent::ChildGarbage { sample, .. }) if sample == "Server started!")));
    let (x, o) = h.post(Some(&sid), false, req(json!(1), "x"));
    assert_eq!(o.respond(x).0, 404);
}

#[test]
fn child_exit_ends_its_session_without_a_kill() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (x, _) = h.post(Some(&sid), false, req(json!(1), "tools/call"));
    let o = Outs(h.sim.child_exit(c, "exit status 3"));
    assert!(o.respond(x).2["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exit status 3"));
    assert!(o.killed().is_empty());
    assert_eq!(h.sim.bridge.child_count(), 0);
    assert_eq!(
        o.session_ended(),
        vec![EndReason::ChildExited("exit status 3".into())]
    );
}

#[test]
fn request_timeout_answers_the_client_and_cancels_at_the_child() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (x, o) = h.post(Some(&sid), false, req(json!("t"), "tools/call"));
    let rid = o.to_child()[0].1["id"].clone();
    let o = h.advance(Duration::from_secs(31));
    assert_eq!(o.respond(x).2["id"], "t");
    let cancel = o.to_child();
    assert_eq!(cancel[0].0, c);
    assert_eq!(cancel[0].1["method"], "notifications/cancelled");
    assert_eq!(cancel[0].1["params"]["requestId"], rid);
}

#[test]
fn client_cancellation_is_rewritten_to_the_router_id() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, _, _) = h.init(json!(0));
    let (_, o) = h.post(Some(&sid), true, req(json!(8), "tools/call"));
    let rid = o.to_child()[0].1["id"].clone();
    let (x, o) = h.post(
        Some(&sid),
        false,
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":8}}),
    );
    assert_eq!(o.respond(x).0, 202);
    assert_eq!(o.to_child()[0].1["params"]["requestId"], rid);
}

#[test]
fn legacy_sse_session() {
    let mut h = H::new(ChildMode::PerSession);
    let (g, o) = h.req(Method::Get, "/sse", None, true, "");
    assert!(o.started(g));
    assert_eq!(o.spawned().len(), 1);
    let c = o.spawned()[0];
    let ev = o.events(g);
    assert_eq!(ev[0].1, "endpoint");
    let uri = ev[0].2.as_str().unwrap().to_string();
    assert!(uri.starts_with("/message?sessionId="), "{uri}");
    let (x, o) = h.req(
        Method::Post,
        &uri,
        None,
        false,
        &req(json!(1), "initialize").to_string(),
    );
    assert_eq!(o.respond(x).0, 202);
    let m = o.to_child()[0].1.clone();
    let o = h.line(c, json!({"jsonrpc":"2.0","id":m["id"],"result":{}}));
    let ev = o.events(g);
    assert_eq!(ev[0].1, "message");
    assert_eq!(ev[0].2["id"], 1);
    // the Python SDK's parameter name works too; unknown sessions get 404
    let py = uri.replace("sessionId", "session_id");
    let (x, o) = h.req(
        Method::Post,
        &py,
        None,
        false,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string(),
    );
    assert_eq!(o.respond(x).0, 202);
    let (x, o) = h.req(Method::Post, "/message?sessionId=zz", None, false, "{}");
    assert_eq!(o.respond(x).0, 404);
    // the stream closing ends the session at once
    let o = Outs(h.sim.exchange_closed(g));
    assert_eq!(o.killed(), vec![c]);
    assert_eq!(o.session_ended(), vec![EndReason::LegacyStreamClosed]);
}

#[test]
fn slow_client_ends_only_its_session() {
    let mut h = H::new(ChildMode::Shared);
    let (s1, c, _) = h.init(json!(1));
    let (s2x, _) = h.post(None, false, req(json!(1), "initialize"));
    let _ = s2x;
    let (g1, _) = h.req(Method::Get, "/mcp", Some(&s1), true, "");
    let o = Outs(h.sim.stream_overflow(g1));
    assert_eq!(o.session_ended(), vec![EndReason::SlowClient]);
    assert!(o.killed().is_empty());
    // nothing more is written to the overflowing stream
    assert!(o.events(g1).is_empty());
    assert_eq!(h.sim.bridge.session_count(), 1);
    assert_eq!(h.sim.bridge.child_count(), 1);
    let _ = c;
}

#[test]
fn shutdown_kills_every_child_and_refuses_new_work() {
    let mut h = H::new(ChildMode::PerSession);
    let (_, c1, _) = h.init(json!(0));
    let (_, c2, _) = h.init(json!(0));
    let o = Outs(h.sim.shutdown());
    let mut k = o.killed();
    k.sort();
    assert_eq!(k, vec![c1, c2]);
    assert_eq!(o.session_ended().len(), 2);
    let (x, o) = h.post(None, false, req(json!(1), "initialize"));
    assert_eq!(o.respond(x).0, 503);
    assert_eq!(h.sim.bridge.poll_timeout(), None);
}

#[test]
fn a_response_whose_post_stream_closed_never_goes_to_the_get_stream() {
    let mut h = H::new(ChildMode::PerSession);
    let (sid, c, _) = h.init(json!(0));
    let (g, _) = h.req(Method::Get, "/mcp", Some(&sid), true, "");
    let (p, o) = h.post(Some(&sid), true, req(json!(5), "tools/call"));
    let rid = o.to_child()[0].1["id"].clone();
    let _ = h.sim.exchange_closed(p);
    // progress still reaches the client (on the GET stream), the response does not
    let o = h.line(
        c,
        json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":rid}}),
    );
    assert_eq!(o.events(g).len(), 1);
    let o = h.line(c, json!({"jsonrpc":"2.0","id":rid,"result":{}}));
    assert!(o.events(g).is_empty(), "{o:?}");
    assert!(o
        .0
        .iter()
        .any(|o| matches!(o, BridgeOutput::Log(BridgeEvent::Dropped { .. }))));
}

/// Unattached timeout 10 s, grace 30 s (longer, so a lost stream ends as unattached),
/// requests bounded by 20 s, idle TTL 2 h.
fn unattached_cfg(mode: ChildMode) -> BridgeConfig {
    BridgeConfig {
        mode,
        max_children: 3,
        idle_ttl: Duration::from_secs(7200),
        unattached_timeout: Duration::from_secs(10),
        stream_grace: Duration::from_secs(30),
        request_timeout: Duration::from_secs(20),
        ..BridgeConfig::default()
    }
}

#[test]
fn unattached_session_ends_exactly_at_its_deadline_and_activity_slides_it() {
    let mut h = H::with(unattached_cfg(ChildMode::PerSession));
    let t0 = h.sim.now;
    let (a, ca, _) = h.init(json!(0));
    assert_eq!(
        h.sim.bridge.poll_timeout(),
        Some(t0 + Duration::from_secs(10))
    );
    let o = h.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(o.killed().is_empty(), "ended before its deadline: {o:?}");
    assert!(o.session_ended().is_empty());
    let o = h.advance(Duration::from_nanos(1));
    assert_eq!(o.killed(), vec![ca]);
    assert_eq!(o.session_ended(), vec![EndReason::Unattached]);
    assert_eq!(EndReason::Unattached.label(), "unattached");
    assert_eq!(h.sim.bridge.session_count(), 0);
    assert_eq!(h.sim.bridge.poll_timeout(), None);
    let (x, o) = h.post(Some(&a), false, req(json!(1), "ping"));
    assert_eq!(o.respond(x).0, 404);
    // a request and its answer slide the deadline: it counts from the answer
    let (b, cb, _) = h.init(json!(0));
    h.advance(Duration::from_secs(6));
    let (x, o) = h.post(Some(&b), false, req(json!(1), "ping"));
    let rid = o.to_child()[0].1["id"].clone();
    h.advance(Duration::from_secs(3));
    let o = h.line(cb, json!({"jsonrpc":"2.0","id":rid,"result":{}}));
    assert_eq!(o.respond(x).0, 200);
    let answered = h.sim.now;
    assert_eq!(
        h.sim.bridge.poll_timeout(),
        Some(answered + Duration::from_secs(10))
    );
    let o = h.advance(Duration::from_secs(9));
    assert!(o.killed().is_empty());
    // a notification is activity too
    let (x, o) = h.post(
        Some(&b),
        false,
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(o.respond(x).0, 202);
    let o = h.advance(Duration::from_secs(9));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_secs(1));
    assert_eq!(o.killed(), vec![cb]);
    assert_eq!(o.session_ended(), vec![EndReason::Unattached]);
}

#[test]
fn open_stream_or_request_in_flight_keeps_a_session_attached() {
    let mut h = H::with(unattached_cfg(ChildMode::PerSession));
    // a GET stream: never unattached while it is open
    let (s1, c1, _) = h.init(json!(0));
    let (g, o) = h.req(Method::Get, "/mcp", Some(&s1), true, "");
    assert!(o.started(g));
    // a request in flight (the child never answers within 15 s; bound 20 s)
    let (s2, c2, _) = h.init(json!(0));
    let (x2, o) = h.post(Some(&s2), false, req(json!(1), "tools/call"));
    assert_eq!(o.to_child().len(), 1);
    // a POST stream whose request is in flight
    let (s3, c3, _) = h.init(json!(0));
    let (p3, o) = h.post(Some(&s3), true, req(json!(1), "tools/call"));
    assert!(o.started(p3));
    let o = h.advance(Duration::from_secs(15));
    assert!(o.killed().is_empty(), "{o:?}");
    // the requests time out at 20 s (activity): 10 s more from then
    let o = h.advance(Duration::from_secs(5));
    assert_eq!(o.respond(x2).0, 200);
    assert!(o.ended(p3));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_nanos(1));
    let mut k = o.killed();
    k.sort();
    assert_eq!(k, vec![c2, c3]);
    assert_eq!(o.session_ended(), vec![EndReason::Unattached; 2]);
    // the GET stream's session is still there an hour later
    let o = h.advance(Duration::from_secs(3600));
    assert!(o.killed().is_empty());
    let (x, o) = h.post(Some(&s1), false, req(json!(2), "ping"));
    let rid = o.to_child()[0].1["id"].clone();
    // once its stream is gone and its request answered it is unattached (the grace is
    // longer here); a request whose client left is still in flight
    let _ = h.sim.exchange_closed(g);
    let _ = h.sim.exchange_closed(x);
    let o = h.advance(Duration::from_secs(15));
    assert!(o.killed().is_empty());
    let o = h.line(c1, json!({"jsonrpc":"2.0","id":rid,"result":{}}));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_secs(10) - Duration::from_nanos(1));
    assert!(o.killed().is_empty());
    let o = h.advance(Duration::from_nanos(1));
    assert_eq!(o.killed(), vec![c1]);
    assert_eq!(o.session_ended(), vec![EndReason::Unattached]);
}

#[test]
fn unattached_expiry_frees_the_child_cap_for_a_new_client() {
    let mut h = H::with(BridgeConfig {
        unattached_timeout: Duration::from_secs(2),
        ..unattached_cfg(ChildMode::PerSession)
    });
    let t0 = h.sim.now;
    let kids: Vec<ChildId> = (0..3).map(|i| h.init(json!(i)).1).collect();
    let (x, o) = h.post(None, false, req(json!("fourth"), "initialize"));
    assert_eq!(o.respond(x).0, 503);
    assert!(o.spawned().is_empty());
    assert_eq!(
        h.sim.bridge.poll_timeout(),
        Some(t0 + Duration::from_secs(2))
    );
    let o = h.advance(Duration::from_secs(2));
    let mut k = o.killed();
    k.sort();
    assert_eq!(k, kids);
    assert_eq!(h.sim.bridge.child_count(), 0);
    let (_, c, o) = h.init(json!("fourth"));
    assert_eq!(o.spawned(), vec![c]);
}

#[test]
fn shared_child_is_killed_when_its_last_unattached_session_ends() {
    let mut h = H::with(unattached_cfg(ChildMode::Shared));
    let (_, c, _) = h.init(json!(0));
    h.advance(Duration::from_secs(5));
    let (b, c2, _) = h.init(json!(0));
    assert_eq!(c, c2);
    let (g, _) = h.req(Method::Get, "/mcp", Some(&b), true, "");
    let o = h.advance(Duration::from_secs(5));
    assert_eq!(o.session_ended(), vec![EndReason::Unattached]);
    assert!(o.killed().is_empty(), "the other session still uses it");
    let _ = h.sim.exchange_closed(g);
    let o = h.advance(Duration::from_secs(10));
    assert_eq!(o.session_ended(), vec![EndReason::Unattached]);
    assert_eq!(o.killed(), vec![c]);
}

#[test]
fn legacy_session_with_its_stream_is_never_unattached() {
    let mut h = H::with(unattached_cfg(ChildMode::PerSession));
    let (g, o) = h.req(Method::Get, "/sse", None, true, "");
    assert!(o.started(g));
    let o = h.advance(Duration::from_secs(3600));
    assert!(o.killed().is_empty() && o.session_ended().is_empty());
}

#[test]
fn per_client_quotas_apply_to_children() {
    let mut c = cfg(ChildMode::PerSession);
    c.max_children = 10;
    c.client_max_sessions = 2;
    let mut h = H::with(c);
    let (_, o) = h.post(None, false, req(json!(1), "initialize"));
    assert_eq!(o.spawned().len(), 1);
    let (_, o) = h.post(None, false, req(json!(2), "initialize"));
    assert_eq!(o.spawned().len(), 1);
    // the third of the same client: 429, no child
    let (_, o) = h.post(None, false, req(json!(3), "initialize"));
    assert!(o.spawned().is_empty());
    let Some(BridgeOutput::Respond {
        status,
        headers,
        body,
        ..
    }) =
        o.0.iter()
            .find(|o| matches!(o, BridgeOutput::Respond { .. }))
    else {
        panic!("{o:?}")
    };
    assert_eq!(*status, 429);
    assert!(headers.iter().any(|(n, v)| *n == "Retry-After" && v == "1"));
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["id"], 3);
    // another client still gets a child
    h.client = crate::ClientId(9);
    let (_, o) = h.post(None, false, req(json!(4), "initialize"));
    assert_eq!(o.spawned().len(), 1);

    // the rate: a burst of 2, then 1 a second
    let mut c = cfg(ChildMode::PerSession);
    c.max_children = 10;
    c.client_session_rate = 1;
    c.client_session_burst = 2;
    let mut h = H::with(c);
    for i in 0..2 {
        let (_, o) = h.post(None, false, req(json!(i), "initialize"));
        assert_eq!(o.spawned().len(), 1);
    }
    let (_, o) = h.post(None, false, req(json!(5), "initialize"));
    assert!(o.spawned().is_empty());
    assert!(o
        .0
        .iter()
        .any(|o| matches!(o, BridgeOutput::Respond { status: 429, .. })));
    h.sim.now += Duration::from_millis(1000);
    let (_, o) = h.post(None, false, req(json!(6), "initialize"));
    assert_eq!(o.spawned().len(), 1);
}

#[test]
fn a_simple_command_is_execed_by_sh() {
    for (cmd, want) in [
        ("python3 server.py", "exec python3 server.py"),
        (
            "  npx -y @modelcontextprotocol/server-everything ",
            "exec npx -y @modelcontextprotocol/server-everything",
        ),
        (
            "node \"my server.js\" $PORT",
            "exec node \"my server.js\" $PORT",
        ),
        ("cd /x && exec npx y", "cd /x && exec npx y"),
        ("a | b", "a | b"),
        ("a; b", "a; b"),
        ("a > log", "a > log"),
        ("x $(y)", "x $(y)"),
        ("FOO=1 server", "FOO=1 server"),
        ("exec server", "exec server"),
        ("while true; do x; done", "while true; do x; done"),
        ("a\nb", "a\nb"),
        ("a &", "a &"),
    ] {
        assert_eq!(shell_command(cmd), want, "{cmd:?}");
    }
}
