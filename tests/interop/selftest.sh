#!/usr/bin/env bash
# Self-test of the interop harness, without the router. Starts, on free ports, one
# server-everything per transport and one fastmcp_server.py per transport (--http/--sse),
# then runs directly against the matching instance:
#   - ts_client.mjs / py_client.py (echo) in both modes against server-everything (4 runs);
#   - stdio_ts_client.mjs / stdio_py_client.py (full feature set) in both modes against
#     both servers (8 runs), and with --sessions 3 (everything: concurrent sessions;
#     fastmcp: --expect-shared, because one directly-served process holds every session)
#     (8 runs);
#   - the same stdio_* clients through mock_stdio_bridge.py (a tiny stdio -> HTTP bridge,
#     one child per session) running `start-everything.sh stdio` and fastmcp_server.py over
#     stdio: both clients x both modes x both servers (8 runs), plus --sessions 3 isolation
#     against fastmcp (per-session children: distinct pids, counters 1..i) (4 runs).
# Needs .ci/install-interop.sh to have run. Exit 0 only if all pass.
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

declare -A port fport
for mode in streamable sse; do
  port[$mode]=$(free_port)
  ./start-everything.sh "$mode" "${port[$mode]}" >"$logdir/$mode.log" 2>&1 &
  pids+=($!)
  echo "started server-everything $mode on port ${port[$mode]} (pid $!)"
  wait_port "${port[$mode]}" "$!"
done
for mode in streamable sse; do
  fport[$mode]=$(free_port)
  if [[ $mode == streamable ]]; then flag=--http; else flag=--sse; fi
  "$py" fastmcp_server.py "$flag" "${fport[$mode]}" >"$logdir/fastmcp-$mode.log" 2>&1 &
  pids+=($!)
  echo "started fastmcp_server.py $flag on port ${fport[$mode]} (pid $!)"
  wait_port "${fport[$mode]}" "$!"
done
declare -A bport
for server in everything fastmcp; do
  bport[$server]=$(free_port)
  if [[ $server == everything ]]; then child="$here/start-everything.sh stdio"; else child="$py $here/fastmcp_server.py"; fi
  "$py" mock_stdio_bridge.py "${bport[$server]}" "$child" >"$logdir/bridge-$server.log" 2>&1 &
  pids+=($!)
  echo "started mock_stdio_bridge.py for $server (stdio) on port ${bport[$server]} (pid $!)"
  wait_port "${bport[$server]}" "$!"
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

# Full-feature clients: the last stdout line is {"check":"all","ok":true,...}.
run_full() { # label, command...
  local label=$1 out last
  shift
  out=$("$@" 2>"$logdir/full.err") || true
  last=$(tail -n 1 <<<"$out")
  if [[ $last == '{"check":"all","ok":true,'* ]]; then
    passed=$((passed + 1))
    echo "$label: ok ($(grep -v '"check":"all"' <<<"$out" | grep -c '"ok":true') checks)"
  else
    failed=$((failed + 1))
    echo "$label: FAILED"
    sed 's/^/    stdout: /' <<<"$out" | tail -20
    sed 's/^/    stderr: /' "$logdir/full.err" | tail -20
  fi
}
for server in everything fastmcp; do
  for mode in streamable sse; do
    if [[ $server == everything ]]; then p=${port[$mode]}; many=(--sessions 3); else p=${fport[$mode]}; many=(--sessions 3 --expect-shared); fi
    base="http://127.0.0.1:$p"
    for client in ts py; do
      if [[ $client == ts ]]; then cmd=(node stdio_ts_client.mjs); else cmd=("$py" stdio_py_client.py); fi
      run_full "stdio_$client $mode $server" "${cmd[@]}" "$base" "$mode" "$server"
      run_full "stdio_$client $mode $server ${many[*]}" "${cmd[@]}" "$base" "$mode" "$server" "${many[@]}"
    done
  done
done
for server in everything fastmcp; do
  base="http://127.0.0.1:${bport[$server]}"
  for mode in streamable sse; do
    for client in ts py; do
      if [[ $client == ts ]]; then cmd=(node stdio_ts_client.mjs); else cmd=("$py" stdio_py_client.py); fi
      run_full "bridge stdio_$client $mode $server" "${cmd[@]}" "$base" "$mode" "$server"
      if [[ $server == fastmcp ]]; then
        run_full "bridge stdio_$client $mode $server --sessions 3" "${cmd[@]}" "$base" "$mode" "$server" --sessions 3
      fi
    done
  done
done
echo "interop: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
