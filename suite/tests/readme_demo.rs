//! The README's quick demo, run as written: the block after the `quick-demo` marker
//! is taken from README.md and run with `bash`, its only change being its ports
//! (3001, 3002, 8080, 9090 become free ones, replaced in the same text, so that the
//! test does not collide with anything on the machine). It runs in `tests/interop`,
//! where `npx` finds the `server-everything` that `.ci/install-interop.sh` installed
//! (elsewhere `npx -y` downloads it). The demo must show each session's calls reaching
//! one replica, and the two sessions on different replicas.

use mcp_router_testkit::harness::{free_port, interop_dir};
use std::process::Command;
use std::time::Duration;

fn demo_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let after = readme
        .split_once("<!-- quick-demo:")
        .expect("README.md has the quick-demo marker")
        .1;
    let start = after.find("```sh\n").expect("a sh block after the marker") + 6;
    let end = start + after[start..].find("\n```").expect("the block ends");
    after[start..end].to_string()
}

#[test]
fn readme_quick_demo_runs_verbatim() {
    let dir = interop_dir();
    let mut script = demo_block();
    let ports: Vec<(String, String)> = ["3001", "3002", "8080", "9090"]
        .iter()
        .map(|p| (p.to_string(), free_port().to_string()))
        .collect();
    // through placeholders: a new port may contain an old one (38080)
    for (i, (from, _)) in ports.iter().enumerate() {
        assert!(script.contains(from.as_str()), "the demo uses port {from}");
        script = script.replace(from.as_str(), &format!("@PORT{i}@"));
    }
    for (i, (_, to)) in ports.iter().enumerate() {
        script = script.replace(&format!("@PORT{i}@"), to);
    }
    eprintln!("---- the README demo (ports replaced) ----\n{script}\n----");
    // its own process group, so that whatever it leaves behind can be stopped
    let mut child = Command::new("setsid")
        .args(["bash", "-c", &script])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run bash");
    let pid = child.id();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).ok();
        out
    });
    // first run: cargo may build, npx may download
    let deadline = std::time::Instant::now() + Duration::from_secs(480);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // stop the group in any case (the demo's own `kill` should have done it; what
    // npx started may outlive it and hold the output pipe)
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pid}")])
        .status();
    let _ = child.wait();
    let out = reader.join().unwrap();
    eprintln!("---- its output ----\n{out}----");
    let status = status.expect("the demo did not finish within 8 minutes");
    assert!(status.success(), "the demo failed: {out}");
    let port = |p: &str| ports.iter().find(|(f, _)| f == p).unwrap().1.clone();
    let (r0, r1) = (port("3001"), port("3002"));
    let mut seen = std::collections::BTreeMap::<String, Vec<String>>::new();
    // (the replicas log to the same output)
    for l in out.lines().filter(|l| l.starts_with("round ")) {
        // "round 1: session 1 -> replica on port 3001"
        let (head, port) = l.split_once(" -> replica on port ").expect(l);
        let session = head.split(": ").nth(1).expect(l).to_string();
        seen.entry(session).or_default().push(port.to_string());
    }
    assert_eq!(seen.len(), 2, "two sessions: {out}");
    let mut placed = Vec::new();
    for (session, ports) in &seen {
        assert_eq!(ports.len(), 3, "{session}: three rounds: {out}");
        assert!(
            ports.iter().all(|p| p == &ports[0]),
            "{session} moved between replicas: {out}"
        );
        placed.push(ports[0].clone());
    }
    placed.sort();
    let mut want = vec![r0, r1];
    want.sort();
    assert_eq!(placed, want, "one session per replica: {out}");
}
