//! Process accounting from `/proc` (Linux): descendants of a process, process groups,
//! zombies. Used to prove that a router leaves no child process behind.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone)]
pub struct P {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group.
    pub pgrp: i32,
    /// State letter (`Z`: zombie).
    pub state: char,
    /// Command name (`comm`).
    pub cmd: String,
}

/// Every process of the machine.
pub fn procs() -> Vec<P> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may hold spaces and parens
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        if rest.len() < 3 {
            continue;
        }
        v.push(P {
            pid,
            ppid: rest[1].parse().unwrap_or(0),
            pgrp: rest[2].parse().unwrap_or(0),
            state: rest[0].chars().next().unwrap_or('?'),
            cmd: stat[open + 1..close].to_string(),
        });
    }
    v
}

/// Every process below `root` (children, grandchildren, ...), zombies included.
pub fn descendants(root: u32) -> Vec<P> {
    let all = procs();
    let mut set: BTreeSet<i32> = BTreeSet::from([root as i32]);
    loop {
        let before = set.len();
        for p in &all {
            if set.contains(&p.ppid) {
                set.insert(p.pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    all.into_iter()
        .filter(|p| p.pid != root as i32 && set.contains(&p.pid))
        .collect()
}

/// The process groups of the router's children (each child leads its own).
pub fn child_groups(router: u32) -> BTreeSet<i32> {
    descendants(router)
        .iter()
        .map(|p| p.pgrp)
        .filter(|g| *g != router as i32 && *g != own_pgrp(router))
        .collect()
}

/// The process group of `pid` (-1 if it is gone).
pub fn own_pgrp(pid: u32) -> i32 {
    procs()
        .iter()
        .find(|p| p.pid == pid as i32)
        .map_or(-1, |p| p.pgrp)
}

/// Every process in one of `groups`.
pub fn in_groups(groups: &BTreeSet<i32>) -> Vec<P> {
    procs()
        .into_iter()
        .filter(|p| groups.contains(&p.pgrp))
        .collect()
}

/// Poll `f` every 25 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
