//! Replays every checked-in fuzz input (fuzz/corpus/<target>/seed-* and
//! fuzz/regressions/<target>/*) through the same checks the cargo-fuzz targets run, on
//! stable, so CI covers the seeds and every crash ever found without nightly.

use mcp_router_core::fuzzing::TARGETS;
use std::path::{Path, PathBuf};

fn inputs(dir: &Path, seeds_only: bool) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !seeds_only
                || p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_checked_in_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut total = 0;
    for (name, check) in TARGETS {
        let seeds = inputs(&root.join("corpus").join(name), true);
        let regressions = inputs(&root.join("regressions").join(name), false);
        assert!(!seeds.is_empty(), "no seeds checked in for {name}");
        for path in seeds.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{name}: {} fails its checks", path.display());
            total += 1;
        }
    }
    eprintln!("{total} fuzz inputs replayed");
}
