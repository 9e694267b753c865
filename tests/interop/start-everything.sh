#!/usr/bin/env bash
# Start @modelcontextprotocol/server-everything (installed in ./node_modules by
# .ci/install-interop.sh) on a given port, in one of its HTTP transports.
#
#   start-everything.sh streamable <port>   -> Streamable HTTP on /mcp (POST/GET/DELETE)
#   start-everything.sh sse <port>          -> legacy HTTP+SSE: GET /sse, POST /message?sessionId=<id>
#   start-everything.sh stdio               -> stdio (JSON-RPC lines on stdin/stdout; for
#                                              mcp-router --stdio "<abs path>/start-everything.sh stdio")
#
# The script execs node directly (no npx wrapper), so the PID of this script is the
# PID of the server: `kill <pid>` stops it. The server listens on all interfaces
# (express app.listen(PORT) with no host); there is no option to choose the host.
set -euo pipefail

usage() { echo "usage: $0 <streamable|sse> <port> | $0 stdio" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
mode=$1
if [[ $mode == stdio ]]; then
  [[ $# -eq 1 ]] || usage
  port=
else
  [[ $# -eq 2 ]] || usage
  port=$2
  [[ $port =~ ^[0-9]+$ ]] || usage
fi

case "$mode" in
  streamable) arg=streamableHttp ;;
  sse) arg=sse ;;
  stdio) arg=stdio ;;
  *) usage ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
entry="$here/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [[ ! -f $entry ]]; then
  echo "$0: $entry not found; run .ci/install-interop.sh first" >&2
  exit 1
fi

[[ -n $port ]] && export PORT="$port"
exec node "$entry" "$arg"
