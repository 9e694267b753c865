#!/usr/bin/env bash
# Self-test of the interop harness, without the router: start one server-everything
# per transport on free ports, run both SDK clients in both modes directly against
# the matching instance, and check that each prints {"ok":true,...}.
# Needs .ci/install-interop.sh to have run. Exit 0 only if all four pass.
#
#   tests/interop/selftest.sh [--rounds N]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
py="$here/.venv/bin/python"
[[ -x $py && -d node_modules ]] || { echo "run .ci/install-interop.sh first" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: poll until 127.0.0.1:PORT accepts (max 15 s), fail if PID died.
wait_port() {
  python3 - "$1" "$2" <<'EOF'
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
t0 = time.monotonic()
while time.monotonic() - t0 < 15:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(f"server pid {pid} exited before accepting on port {port}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        print(f"port {port} accepting after {time.monotonic() - t0:.2f} s")
        sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(f"port {port} not accepting after 15 s")
EOF
}

pids=()
logdir=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

declare -A port
for mode in streamable sse; do
  port[$mode]=$(free_port)
  ./start-everything.sh "$mode" "${port[$mode]}" >"$logdir/$mode.log" 2>&1 &
  pids+=($!)
  echo "started server-everything $mode on port ${port[$mode]} (pid $!)"
  wait_port "${port[$mode]}" "$!"
done

passed=0 failed=0
for mode in streamable sse; do
  base="http://127.0.0.1:${port[$mode]}"
  for client in ts py; do
    if [[ $client == ts ]]; then cmd=(node ts_client.mjs); else cmd=("$py" py_client.py); fi
    out=$("${cmd[@]}" "$base" "$mode" "$@" 2>"$logdir/$client-$mode.err") || true
    echo "$client $mode: $out"
    if [[ $out == '{"ok":true,'* ]]; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1))
      sed 's/^/    stderr: /' "$logdir/$client-$mode.err" | tail -20
    fi
  done
done
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
