#!/usr/bin/env bash
# One command for the end-to-end benchmarks (issue 6): builds the release binaries, runs
# mcp-load's load comparison (and, with --mem, the memory benchmark), and draws the
# chart. The comparison has a row per frontend and two HAProxy rows: `haproxy`
# (session-sticky HTTP mode) and `haproxy-tcp` (`mode tcp`, a byte relay that parses
# nothing: the floor every frontend is judged against, issue 18); every row's CPU per
# request, req/s and p99 are printed as ratios to both, measured in the same run; the
# stdio-* rows are the stdio bridge (issue 15) serving mcp-stdio-echo, shared and
# per-session, on each frontend. Needs taskset (util-linux), haproxy and redis-server (Debian packages),
# python3 (matplotlib is installed into a venv under target/ on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/mcp-bench}
DURATION=${DURATION:-10}
LOAD_CPU=${LOAD_CPU:-1}
PROXY_CPU=${PROXY_CPU:-0}
for t in taskset haproxy redis-server redis-cli; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install util-linux haproxy redis-server)"; exit 1; }
done
cargo build --release --bin mcp-router --bin mcp-router-smol --bin mcp-router-glommio --bin mcp-fake-backend --bin mcp-load --bin mcp-stdio-echo
mkdir -p "$OUT"
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/machine.txt"
taskset -c "$LOAD_CPU" target/release/mcp-load bench --duration "$DURATION" --warmup 2 \
  --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --out "$OUT" | tee "$OUT/load.md"
if [[ "${1:-}" == "--mem" ]]; then
  taskset -c "$LOAD_CPU" target/release/mcp-load mem --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" --out "$OUT"
fi
if [[ ! -x target/chart-venv/bin/python ]]; then
  python3 -m venv target/chart-venv && target/chart-venv/bin/pip install -q matplotlib
fi
target/chart-venv/bin/python benches/chart.py "$OUT"
