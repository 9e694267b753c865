//! The Redis topology harness on its own (no router): a Sentinel group forms and
//! promotes its replica when the primary is SIGKILLed; a cluster forms, serves a key
//! on the right node, reshards, and fails over. Never skipped: without redis-server
//! these panic.

use mcp_router_testkit::redis_topology::{
    command_count, redis_call, redis_cluster, role, sentinel_group, wait_replica_caught_up, Reply,
    CLUSTER_NODE_TIMEOUT_MS, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS,
};
use std::time::{Duration, Instant};

#[test]
fn sentinel_group_forms_and_promotes_the_replica() {
    let t0 = Instant::now();
    let mut g = sentinel_group();
    eprintln!("sentinel group formed in {:?}", t0.elapsed());
    let primary = g.primary_addr();
    assert!(g.url().starts_with("redis+sentinel://127.0.0.1:"));
    assert!(g.url().ends_with("/mymaster"));
    assert_eq!(g.url().matches("127.0.0.1:").count(), 3);
    for s in &g.sentinels {
        assert_eq!(
            g.master_addr_from(&s.addr).as_deref(),
            Some(primary.as_str())
        );
    }
    assert_eq!(role(&primary).as_deref(), Some("master"));
    assert_eq!(role(&g.replica_addr()).as_deref(), Some("slave"));

    // A write on the primary reaches the replica.
    assert_eq!(
        redis_call(&primary, &["SET", "k", "v"]),
        Reply::Status("OK".into())
    );
    assert!(command_count(&primary, "set") >= 1);
    let end = Instant::now() + Duration::from_secs(5);
    while redis_call(&g.replica_addr(), &["GET", "k"]) != Reply::Bulk("v".into()) {
        assert!(Instant::now() < end, "the write never reached the replica");
        std::thread::sleep(Duration::from_millis(20));
    }

    g.kill_primary();
    let t1 = Instant::now();
    let limit = Duration::from_millis(SENTINEL_DOWN_AFTER_MS + SENTINEL_FAILOVER_TIMEOUT_MS)
        + Duration::from_secs(5);
    let promoted = g.wait_promoted(limit);
    let took = t1.elapsed();
    eprintln!("sentinel promotion took {took:?} (limit {limit:?})");
    if promoted.as_deref() != Some(g.replica_addr().as_str()) {
        for (i, s) in g.sentinels.iter().enumerate() {
            eprintln!("sentinel {i} log:\n  {}", s.logs().join("\n  "));
        }
        panic!("no promotion within {limit:?} (got {promoted:?}); sentinel logs above");
    }
    // The promoted replica kept the data and takes writes.
    assert_eq!(
        redis_call(&g.replica_addr(), &["GET", "k"]),
        Reply::Bulk("v".into())
    );
    assert_eq!(
        redis_call(&g.replica_addr(), &["SET", "k2", "v2"]),
        Reply::Status("OK".into())
    );
}

#[test]
fn cluster_forms_serves_keys_and_reshards() {
    let t0 = Instant::now();
    let c = redis_cluster(3, 1);
    eprintln!("cluster 3x1 formed in {:?}", t0.elapsed());
    assert_eq!(c.nodes.len(), 6);
    assert!(c.url().starts_with("redis-cluster://127.0.0.1:"));
    assert_eq!(c.url().matches("127.0.0.1:").count(), 6);
    let prims = c.primaries();
    assert_eq!(prims.len(), 3, "{prims:?}");
    for p in &prims {
        assert_eq!(c.replicas_of(p).len(), 1, "replicas of {p}");
    }

    // SET on the owning node reads back; another primary redirects.
    let key = "foo";
    let slot = c.slot_of(key);
    assert_eq!(slot, 12182, "CRC16 slot of {key}");
    assert_eq!(c.slot_of("{foo}.bar"), slot, "hash tags");
    let owner = c.node_for_slot(slot);
    assert_eq!(owner, c.node_for_key(key));
    assert_eq!(
        redis_call(&owner, &["SET", key, "v"]),
        Reply::Status("OK".into())
    );
    assert_eq!(redis_call(&owner, &["GET", key]), Reply::Bulk("v".into()));
    let other = prims.iter().find(|p| **p != owner).unwrap();
    match redis_call(other, &["GET", key]) {
        Reply::Error(e) => assert_eq!(e, format!("MOVED {slot} {owner}")),
        r => panic!("GET on a non-owner: {r:?}"),
    }

    // Move 100 slots between two primaries (the key's owner gives them).
    let to = other.clone();
    let t1 = Instant::now();
    c.reshard(&owner, &to, 100);
    eprintln!("reshard of 100 slots took {:?}", t1.elapsed());
    let topo = c.topology();
    let count = |a: &str| topo.iter().find(|n| n.addr == a).unwrap().slot_count();
    let total: usize = prims.iter().map(|p| count(p)).sum();
    assert_eq!(total, 16384);
    // The key is still readable from whichever node owns its slot now.
    let now = c.node_for_slot(slot);
    assert_eq!(redis_call(&now, &["GET", key]), Reply::Bulk("v".into()));
}

#[test]
fn cluster_replica_takes_over_a_killed_primary() {
    let mut c = redis_cluster(3, 1);
    let prims = c.primaries();
    let victim = prims[0].clone();
    let replicas = c.replicas_of(&victim);
    assert_eq!(replicas.len(), 1, "{:#?}", c.topology());
    // A key on the victim's slots, to read back from its successor.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| c.node_for_key(k) == victim)
        .unwrap();
    assert_eq!(
        redis_call(&victim, &["SET", &key, "v"]),
        Reply::Status("OK".into())
    );
    assert_eq!(
        redis_call(&victim, &["WAIT", "1", "2000"]),
        Reply::Int(1),
        "the write reached the replica"
    );
    assert!(
        wait_replica_caught_up(&victim, &replicas[0], Duration::from_secs(5)),
        "replica {} never caught up with {victim}",
        replicas[0]
    );

    assert_eq!(c.kill_primary(0), victim);
    let t1 = Instant::now();
    let limit = Duration::from_millis(CLUSTER_NODE_TIMEOUT_MS) + Duration::from_secs(10);
    let new = c.wait_failover(limit);
    eprintln!("cluster failover took {:?} (limit {limit:?})", t1.elapsed());
    let new = new.unwrap_or_else(|| panic!("no replica took over {victim} within {limit:?}"));
    assert_eq!(new, replicas[0]);
    assert_eq!(role(&new).as_deref(), Some("master"));
    assert!(c.primaries().contains(&new));
    assert!(!c.primaries().contains(&victim));
    assert_eq!(c.node_for_key(&key), new, "{:#?}", c.topology());
    let got = redis_call(&new, &["GET", &key]);
    if got != Reply::Bulk("v".into()) {
        for p in &c.nodes {
            eprintln!("{} log:\n  {}", p.addr, p.logs().join("\n  "));
        }
        panic!("GET {key} on the new primary {new}: {got:?} (victim {victim}); logs above");
    }
}
