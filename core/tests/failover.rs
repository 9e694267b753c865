//! `--failover reinitialize` on the connection machine: the replay, the client's id that
//! never changes, the request lost with its backend, the window, what is not eligible.

mod util;

use mcp_router_core::failover::{FailoverSettings, Outcome};
use mcp_router_core::*;
use std::time::Duration;
use util::*;

fn failover_config(n: usize) -> Config {
    let mut c = config(n);
    c.failover = Some(FailoverSettings {
        window: Duration::from_secs(60),
        max_params: 1024,
        remote: false,
    });
    c
}

fn outcomes(h: &H) -> Vec<Outcome> {
    h.events
        .iter()
        .filter_map(|e| match e {
            Event::Failover { outcome, .. } => Some(*outcome),
            _ => None,
        })
        .collect()
}

/// The replay on the backend the router picked: `initialize` (answered with
/// `new_sid`), then `notifications/initialized`. Returns the backend.
fn replay(h: &mut H, new_sid: &str) -> u16 {
    let (to, fresh) = *h.connects.last().unwrap();
    assert!(fresh, "a replay never takes a pooled connection");
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.starts_with("POST /mcp HTTP/1.1\r\n"), "{up}");
    assert!(
        up.ends_with(INIT),
        "the client's initialize, byte for byte: {up}"
    );
    assert_eq!(header(&up, "Mcp-Session-Id"), None, "{up}");
    h.reply(&json_ok(
        &format!("Mcp-Session-Id: {new_sid}\r\n"),
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    assert_eq!(h.connects.last().unwrap().0, to);
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.contains("notifications/initialized"), "{up}");
    assert_eq!(header(&up, "Mcp-Session-Id"), Some(new_sid), "{up}");
    h.reply(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    to
}

#[test]
fn a_refused_connect_fails_the_session_over_and_the_client_keeps_its_id() {
    let mut h = H::with(failover_config(2));
    let old = init_with(&mut h, "s1", INIT);
    h.take_upstream();
    h.send(&post("/mcp", Some("s1"), CALL));
    assert_eq!(h.connects.last().unwrap().0, old);
    h.connect_fail();
    // nothing answered yet: the replay runs first
    assert!(h.client.is_empty(), "{}", h.take_client());
    let to = replay(&mut h, "new-1");
    assert_ne!(to, old);
    // then the client's request, under the new upstream id
    h.connect_ok(false);
    let up = h.take_upstream();
    assert!(up.ends_with(CALL), "{up}");
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("new-1"), "{up}");
    h.reply(&json_ok(
        "Mcp-Session-Id: new-1\r\n",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    // the backend's new id never reaches the client
    assert_eq!(header(&resp, "Mcp-Session-Id"), Some("s1"), "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Done]);
    assert!(h.ended().is_empty(), "{:?}", h.ended());
    // the next request goes straight to the new backend, one store op
    let ops = h.store_ops;
    h.send(&post("/mcp", Some("s1"), CALL));
    assert_eq!(h.store_ops, ops + 1);
    assert_eq!(h.connects.last().unwrap(), &(to, false));
    h.connect_ok(true);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("new-1"), "{up}");
    assert_eq!(h.router.active_sessions(BackendId(to)), 1);
    assert_eq!(h.router.active_sessions(BackendId(old)), 0);
}

#[test]
fn a_request_written_to_a_backend_that_went_away_is_answered_32603_not_resent() {
    let mut h = H::with(failover_config(2));
    let old = init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_ok(false);
    assert!(h.take_upstream().ends_with(CALL));
    let connects = h.connects.len();
    h.upstream_eof();
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    let v = body_json(&resp);
    assert_eq!(v["error"]["code"], -32603, "{resp}");
    assert_eq!(v["error"]["message"], "backend lost; retry", "{resp}");
    assert_eq!(v["id"], "req-7", "the request's own id: {resp}");
    assert_eq!(h.connects.len(), connects, "never sent again");
    assert_eq!(outcomes(&h), vec![Outcome::Lost]);
    // the session moves on: its next request fails over
    h.send(&post("/mcp", Some("s1"), CALL));
    assert_eq!(h.connects.last().unwrap().0, old);
    h.connect_fail();
    replay(&mut h, "new-1");
    h.connect_ok(false);
    assert!(h.take_upstream().ends_with(CALL));
    assert_eq!(outcomes(&h), vec![Outcome::Lost, Outcome::Done]);
}

#[test]
fn one_failover_per_window_a_replacement_that_dies_too_ends_the_session() {
    let mut h = H::with(failover_config(3));
    init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    replay(&mut h, "new-1");
    h.connect_ok(false);
    h.reply(&json_ok(
        "",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    h.take_client();
    // the replacement refuses too, within the window: 404, the record ends
    h.advance(Duration::from_secs(10));
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(body_json(&resp)["error"]["code"], -32001);
    assert_eq!(outcomes(&h), vec![Outcome::Done, Outcome::Window]);
    assert_eq!(h.ended(), vec![EndCause::BackendDown]);
}

#[test]
fn after_the_window_a_session_may_fail_over_again() {
    let mut h = H::with(failover_config(3));
    init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    replay(&mut h, "new-1");
    h.connect_ok(false);
    h.reply(&json_ok(
        "",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    h.take_client();
    h.advance(Duration::from_secs(61));
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    replay(&mut h, "new-2");
    h.connect_ok(false);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("new-2"), "{up}");
    assert_eq!(outcomes(&h), vec![Outcome::Done, Outcome::Done]);
}

#[test]
fn an_initialize_over_the_bound_is_not_eligible() {
    let mut h = H::with(failover_config(2));
    let big = INIT.replace(
        r#""name":"t""#,
        &format!(r#""name":"{}""#, "x".repeat(2000)),
    );
    init_with(&mut h, "s1", &big);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Ineligible]);
}

#[test]
fn a_failed_replay_is_a_404_as_without_failover() {
    let mut h = H::with(failover_config(2));
    init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    h.connect_ok(false);
    // the new backend answers initialize without a session id
    h.reply(&json_ok("", r#"{"jsonrpc":"2.0","id":1,"result":{}}"#));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Failed]);
    assert_eq!(h.ended(), vec![EndCause::BackendDown]);
}

#[test]
fn without_failover_a_refused_connect_is_a_404() {
    let mut h = H::new(2);
    init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    assert_eq!(status_of(&h.take_client()), 404);
    assert!(outcomes(&h).is_empty());
}

#[test]
fn a_request_on_a_pooled_connection_that_ends_unanswered_is_not_failed_over() {
    let mut h = H::with(failover_config(2));
    let old = init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_ok(true);
    assert!(h.take_upstream().ends_with(CALL));
    // the pooled connection ends without an answer: resent on a fresh one (to the same
    // backend only), which is refused
    h.upstream_eof();
    assert_eq!(h.connects.last().unwrap(), &(old, true));
    let connects = h.connects.len();
    h.connect_fail();
    let resp = h.take_client();
    assert_eq!(body_json(&resp)["error"]["code"], -32603, "{resp}");
    assert_eq!(h.connects.len(), connects, "no replay, no resend elsewhere");
    assert_eq!(outcomes(&h), vec![Outcome::Lost]);
}

/// The embedded store keeps the failover state beside the record: handed out with it,
/// replaced only over the generation it started from, gone with it, and an expired
/// failed-over record is reported (and reaped) by the backend's new id.
#[test]
fn the_store_keeps_failover_state_with_its_record() {
    use std::sync::Arc;
    let now = std::time::Instant::now();
    let mut s = MemStore::new(Duration::from_secs(10), 100, now);
    let rec = Record {
        backend: BackendId(0),
        era: Era::Streamable,
        client: ClientId::of_addr("192.0.2.1".parse().unwrap()),
    };
    let state = |upstream: Option<&str>, generation| {
        Arc::new(failover::Failover {
            params: bytes::Bytes::from_static(INIT.as_bytes()),
            upstream: upstream.map(key),
            at: None,
            generation,
        })
    };
    s.execute(&StoreOp::Insert(key("plain"), rec), now);
    assert_eq!(
        s.execute(&StoreOp::Get(key("plain")), now),
        StoreReply::Found(Some(rec))
    );
    s.execute(
        &StoreOp::InsertFailover(key("s1"), rec, state(None, 0)),
        now,
    );
    assert_eq!(
        s.execute(&StoreOp::Get(key("s1")), now),
        StoreReply::FoundFailover(rec, state(None, 0))
    );
    let moved = Record {
        backend: BackendId(1),
        ..rec
    };
    let fail_over = |from| StoreOp::FailOver {
        key: key("s1"),
        record: moved,
        state: state(Some("new-1"), from + 1),
        from,
    };
    assert_eq!(s.execute(&fail_over(0), now), StoreReply::FailedOver(true));
    // a second connection that started from generation 0 as well loses
    assert_eq!(s.execute(&fail_over(0), now), StoreReply::FailedOver(false));
    assert_eq!(
        s.execute(&StoreOp::Get(key("s1")), now),
        StoreReply::FoundFailover(moved, state(Some("new-1"), 1))
    );
    // expired: reported by the new upstream id, and its state is gone
    let mut out = Vec::new();
    s.expire(now + Duration::from_secs(11), &mut out);
    let ids: Vec<&str> = out.iter().map(|(k, _)| k.as_str()).collect();
    assert!(ids.contains(&"new-1") && ids.contains(&"plain"), "{ids:?}");
    s.execute(
        &StoreOp::Insert(key("s1"), rec),
        now + Duration::from_secs(12),
    );
    assert_eq!(
        s.execute(&StoreOp::Get(key("s1")), now + Duration::from_secs(12)),
        StoreReply::Found(Some(rec)),
        "a new record under the same id starts without the old state"
    );
}

/// Sealed ids with the embedded store: the token the client holds names the old
/// backend and upstream id; after a failover its record maps it to the new ones, and
/// the client's token comes back unchanged.
#[test]
fn a_sealed_session_fails_over_through_its_record_and_keeps_its_token() {
    let mut c = failover_config(2);
    c.session_ids = SessionIds::Sealed;
    c.session_keys = Some(std::sync::Arc::new(
        KeyRing::parse("0101010101010101010101010101010101010101010101010101010101010101").unwrap(),
    ));
    c.session_records = true;
    let mut h = H::with(c);
    h.send(&post("/mcp", None, INIT));
    let old = h.connects[0].0;
    h.connect_ok(false);
    h.reply(&json_ok(
        "Mcp-Session-Id: up-1\r\n",
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    let resp = h.take_client();
    let token = header(&resp, "mcp-session-id").unwrap().to_string();
    assert_ne!(token, "up-1");
    h.send(&post("/mcp", Some(&token), CALL));
    assert_eq!(h.connects.last().unwrap().0, old);
    h.connect_fail();
    replay(&mut h, "up-2");
    h.connect_ok(false);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("up-2"), "{up}");
    assert!(!up.contains(&token), "{up}");
    h.reply(&json_ok(
        "Mcp-Session-Id: up-2\r\n",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(
        header(&resp, "mcp-session-id"),
        Some(token.as_str()),
        "{resp}"
    );
    assert!(!resp.contains("up-2"), "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Done]);
}

/// Two connections fail the same session over at once: the store takes the first
/// mapping only; the second connection follows it (its own replayed session is left
/// to its backend's expiry).
#[test]
fn a_connection_that_loses_the_race_follows_the_winners_mapping() {
    let mut h = H::with(failover_config(3));
    let old = init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    let (to, _) = *h.connects.last().unwrap();
    h.connect_ok(false);
    h.reply(&json_ok(
        "Mcp-Session-Id: mine\r\n",
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    ));
    h.connect_ok(false);
    h.auto_store = false;
    h.reply(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    // meanwhile another connection stored its failover to the third backend
    let winner = (0..3).find(|b| *b != old && *b != to).unwrap();
    let Some(StoreReply::FoundFailover(rec, st)) =
        Some(h.store.execute(&StoreOp::Get(key("s1")), h.now))
    else {
        panic!("no failover state")
    };
    let theirs = StoreOp::FailOver {
        key: key("s1"),
        record: Record {
            backend: BackendId(winner),
            ..rec
        },
        state: std::sync::Arc::new(failover::Failover {
            params: st.params.clone(),
            upstream: Some(key("theirs")),
            at: Some(h.now),
            generation: 1,
        }),
        from: 0,
    };
    assert_eq!(
        h.store.execute(&theirs, h.now),
        StoreReply::FailedOver(true)
    );
    // ours is refused, and the request is looked up again
    let op = h.ops.front().unwrap().clone();
    let r = h.store.execute(&op, h.now);
    assert_eq!(r, StoreReply::FailedOver(false));
    h.store_reply(r);
    let op = h.ops.front().unwrap().clone();
    assert!(matches!(op, StoreOp::Get(_)), "{op:?}");
    let r = h.store.execute(&op, h.now);
    h.store_reply(r);
    assert_eq!(h.connects.last().unwrap().0, winner);
    h.connect_ok(false);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("theirs"), "{up}");
    assert!(up.ends_with(CALL), "{up}");
    assert_eq!(outcomes(&h), vec![Outcome::Joined]);
}

/// Whatever the new backend answers to the replayed `initialize`, the router does not
/// panic and the session ends with `404` unless the answer is a 2xx with a usable
/// session id and a well-framed body.
#[test]
fn a_hostile_or_broken_replay_answer_is_a_404() {
    let long_sid = format!("Mcp-Session-Id: {}\r\n", "x".repeat(300));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true),
        (
            "500",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec(),
            false,
        ),
        (
            "101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec(),
            false,
        ),
        ("no session id", json_ok("", "{}"), false),
        ("session id too long", json_ok(&long_sid, "{}"), false),
        (
            "control character in the id",
            json_ok("Mcp-Session-Id: a\x01b\r\n", "{}"),
            false,
        ),
        (
            "bad chunk size",
            b"HTTP/1.1 200 OK\r\nMcp-Session-Id: n\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
            false,
        ),
        (
            "cut mid-body",
            b"HTTP/1.1 200 OK\r\nMcp-Session-Id: n\r\nContent-Length: 50\r\n\r\n{".to_vec(),
            true,
        ),
        (
            "cut mid-head",
            b"HTTP/1.1 200 OK\r\nMcp-Sess".to_vec(),
            true,
        ),
    ];
    for (what, answer, then_eof) in cases {
        let mut h = H::with(failover_config(2));
        init_with(&mut h, "s1", INIT);
        h.send(&post("/mcp", Some("s1"), CALL));
        h.connect_fail();
        h.connect_ok(false);
        h.reply(&answer);
        if then_eof {
            h.upstream_eof();
        }
        let resp = h.take_client();
        assert_eq!(status_of(&resp), 404, "{what}: {resp}");
        assert_eq!(body_json(&resp)["id"], "req-7", "{what}: {resp}");
        assert_eq!(outcomes(&h), vec![Outcome::Failed], "{what}");
        assert_eq!(h.ended(), vec![EndCause::BackendDown], "{what}");
    }
}

/// A replay that gets no answer in `--response-timeout` is a `404` too.
#[test]
fn a_replay_without_an_answer_times_out_into_a_404() {
    let mut h = H::with(failover_config(2));
    init_with(&mut h, "s1", INIT);
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    h.connect_ok(false);
    h.advance(h.router.config().timeouts.response + Duration::from_secs(1));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Failed]);
}

/// A small deterministic fuzzer around a failover: random interleavings of connect
/// results, backend answers (whole, split, broken), EOFs, timeouts, client EOFs and
/// more client requests. Nothing panics (the harness also checks that nothing is
/// written upstream while not connected), and whatever reaches the client is HTTP.
#[test]
fn random_event_sequences_around_a_failover_never_panic() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let answers: Vec<Vec<u8>> = vec![
        json_ok(
            "Mcp-Session-Id: new-1\r\n",
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        ),
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_vec(),
        json_ok("Mcp-Session-Id: new-1\r\n", r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#),
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: new-2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ndata:\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        b"\x00\xff garbage\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 9".to_vec(),
    ];
    let mut seen = std::collections::HashSet::new();
    for round in 0..3000 {
        let mut h = H::with(failover_config(3));
        init_with(&mut h, "s1", INIT);
        h.send(&post("/mcp", Some("s1"), CALL));
        let mut answered = h.connects.len() - 1;
        for _ in 0..16 {
            if h.closed {
                break;
            }
            let pending = h.connects.len() > answered && !h.connected;
            match rnd(9) {
                0 | 1 if pending => {
                    answered = h.connects.len();
                    if rnd(3) == 0 {
                        h.connect_fail();
                    } else {
                        h.connect_ok(rnd(2) == 0);
                    }
                }
                2..=4 => {
                    let a = &answers[rnd(answers.len() as u64) as usize];
                    let cut = rnd(a.len() as u64 + 1) as usize;
                    h.reply(&a[..cut]);
                    if rnd(2) == 0 {
                        h.reply(&a[cut..]);
                    }
                }
                5 => h.upstream_eof(),
                6 => h.advance(Duration::from_millis(rnd(400_000))),
                7 if rnd(4) == 0 => h.client_eof(),
                _ => h.send(&post("/mcp", Some("s1"), CALL)),
            }
        }
        let out = String::from_utf8_lossy(&h.client).into_owned();
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 "),
            "round {round}: {out:?}"
        );
        seen.extend(outcomes(&h));
    }
    // the sequences reach the failover's paths, not only the ones around it
    for o in [
        Outcome::Done,
        Outcome::Failed,
        Outcome::Lost,
        Outcome::Window,
    ] {
        assert!(seen.contains(&o), "{o:?} never reached: {seen:?}");
    }
}

/// A session failed over before a reload turned failover off keeps its mapping: its
/// requests still go out under the new upstream id, and the client keeps its id.
#[test]
fn a_failed_over_session_keeps_its_mapping_when_failover_is_turned_off() {
    use std::sync::Arc;
    let mut h = H::new(2);
    let rec = Record {
        backend: BackendId(0),
        era: Era::Streamable,
        client: ClientId::of_addr("192.0.2.7".parse().unwrap()),
    };
    let state = |upstream: Option<&str>, generation| {
        Arc::new(failover::Failover {
            params: bytes::Bytes::from_static(INIT.as_bytes()),
            upstream: upstream.map(key),
            at: None,
            generation,
        })
    };
    let now = h.now;
    h.store.execute(
        &StoreOp::InsertFailover(key("s1"), rec, state(None, 0)),
        now,
    );
    let moved = Record {
        backend: BackendId(1),
        ..rec
    };
    let op = StoreOp::FailOver {
        key: key("s1"),
        record: moved,
        state: state(Some("new-1"), 1),
        from: 0,
    };
    assert_eq!(h.store.execute(&op, now), StoreReply::FailedOver(true));
    h.send(&post("/mcp", Some("s1"), CALL));
    assert_eq!(h.connects.last().unwrap().0, 1);
    h.connect_ok(false);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("new-1"), "{up}");
    h.reply(&json_ok(
        "Mcp-Session-Id: new-1\r\n",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    let resp = h.take_client();
    assert_eq!(header(&resp, "Mcp-Session-Id"), Some("s1"), "{resp}");
}

/// The replay goes to a backend that serves the session eras (`;eras=`), never to a
/// modern-only one, however few sessions that one holds.
#[test]
fn a_session_fails_over_only_to_a_backend_serving_the_session_eras() {
    let mut c = failover_config(0);
    for (i, eras) in ["legacy", "modern", "modern", "legacy"].iter().enumerate() {
        c.backends.push(
            Backend::parse(
                &format!("http://10.0.0.{}:80;eras={eras}", i + 1),
                Some(&format!("b{i}")),
            )
            .unwrap(),
        );
    }
    let mut h = H::with(c);
    let old = init_with(&mut h, "s1", INIT);
    assert!(old == 0 || old == 3, "{old}");
    h.send(&post("/mcp", Some("s1"), CALL));
    h.connect_fail();
    let to = replay(&mut h, "new-1");
    assert_eq!(to, 3 - old, "the other legacy backend");
    assert_eq!(outcomes(&h), vec![Outcome::Done]);
}

fn record_of(h: &mut H, sid: &str) -> Record {
    match h.store.execute(&StoreOp::Get(key(sid)), h.now) {
        StoreReply::FoundFailover(rec, _) | StoreReply::Found(Some(rec)) => rec,
        r => panic!("{r:?}"),
    }
}

/// A store that keeps the `initialize` body off the request path (Redis): a lookup
/// hands out the record alone, and only once a failover is decided does the
/// connection ask for the whole state ([`StoreOp::LoadFailover`]), then replays it. A
/// state the store cannot hand out (no body kept, or one that no longer opens) is
/// not eligible.
#[test]
fn a_remote_store_is_asked_for_the_state_only_when_a_failover_is_decided() {
    let mut c = failover_config(2);
    if let Some(f) = c.failover.as_mut() {
        f.remote = true;
    }
    let mut h = H::with(c);
    let old = init_with(&mut h, "s1", INIT);
    h.take_upstream();
    let rec = record_of(&mut h, "s1");
    // an ordinary request: one lookup, answered as Redis does (the record alone)
    h.auto_store = false;
    h.send(&post("/mcp", Some("s1"), CALL));
    assert!(matches!(h.ops.front(), Some(StoreOp::Get(_))));
    assert_eq!(h.ops.len(), 1);
    h.store_reply(StoreReply::Found(Some(rec)));
    assert_eq!(h.connects.last().unwrap().0, old);
    h.connect_ok(false);
    assert!(h.take_upstream().ends_with(CALL));
    h.reply(&json_ok(
        "",
        r#"{"jsonrpc":"2.0","id":"req-7","result":{}}"#,
    ));
    assert_eq!(status_of(&h.take_client()), 200);
    // the backend is lost: the lookup is the same, then the state is asked for
    h.send(&post("/mcp", Some("s1"), CALL));
    assert!(matches!(h.ops.front(), Some(StoreOp::Get(_))));
    h.store_reply(StoreReply::Found(Some(rec)));
    h.connect_fail();
    assert!(
        matches!(h.ops.front(), Some(StoreOp::LoadFailover(k)) if *k == key("s1")),
        "the state is read once the failover is decided"
    );
    assert!(h.client.is_empty());
    let state = h.store.execute(&StoreOp::LoadFailover(key("s1")), h.now);
    assert!(
        matches!(&state, StoreReply::FailoverState(Some(f)) if f.params.as_ref() == INIT.as_bytes())
    );
    h.auto_store = true;
    h.store_reply(state);
    let to = replay(&mut h, "new-1");
    assert_ne!(to, old);
    h.connect_ok(false);
    let up = h.take_upstream();
    assert_eq!(header(&up, "Mcp-Session-Id"), Some("new-1"), "{up}");
    assert_eq!(outcomes(&h), vec![Outcome::Done]);

    // a session whose state the store does not have: not eligible, 404
    let mut c = failover_config(2);
    if let Some(f) = c.failover.as_mut() {
        f.remote = true;
    }
    let mut h = H::with(c);
    init_with(&mut h, "s2", INIT);
    h.take_upstream();
    let rec = record_of(&mut h, "s2");
    h.auto_store = false;
    h.send(&post("/mcp", Some("s2"), CALL));
    h.store_reply(StoreReply::Found(Some(rec)));
    h.connect_fail();
    assert!(matches!(h.ops.front(), Some(StoreOp::LoadFailover(_))));
    h.auto_store = true;
    h.store_reply(StoreReply::FailoverState(None));
    let resp = h.take_client();
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert_eq!(outcomes(&h), vec![Outcome::Ineligible]);
}
