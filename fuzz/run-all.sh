#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), JOBS at a time (default 2),
# each from its checked-in seeds and regression inputs. Needs nightly and cargo-fuzz
# (`cargo install cargo-fuzz`). Logs go to fuzz/logs/<target>.log; each log's last
# lines carry libFuzzer's "Done N runs in S second(s)". A crash stops that target and
# leaves its input under fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh 600        # every target for 10 minutes, two at a time
#   fuzz/run-all.sh 60 1 sniff # one target for a minute
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-600}"
jobs="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
cargo +nightly fuzz build
run_one() {
  local t="$1"
  mkdir -p "corpus/$t" "regressions/$t"
  # the grown corpus stays in corpus/<t> (git-ignored but for the seeds)
  if cargo +nightly fuzz run "$t" "corpus/$t" "regressions/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 >"logs/$t.log" 2>&1; then
    echo "$t: $(grep -E '^Done [0-9]+ runs' "logs/$t.log" | tail -1)"
  else
    echo "$t: FAILED, see fuzz/logs/$t.log and fuzz/artifacts/$t/"
    return 1
  fi
}
status=0
pids=()
for t in "${targets[@]}"; do
  run_one "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$jobs" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
