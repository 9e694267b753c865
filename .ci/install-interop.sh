#!/usr/bin/env bash
# Install the Node and Python side of the MCP interop tests (tests/interop):
#   - npm packages (@modelcontextprotocol/sdk, @modelcontextprotocol/server-everything)
#     into tests/interop/node_modules, from the committed package-lock.json;
#   - a Python venv in tests/interop/.venv with the pinned `mcp` package.
# Idempotent and non-interactive (works with CI=true and no stdin). Re-running it
# skips the npm step when node_modules already matches the lock file and the pip
# step when the venv already has the pinned requirements.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/tests/interop"
say() { echo "[install-interop] $*"; }

command -v node >/dev/null || { say "node not found on PATH" >&2; exit 1; }
command -v npm >/dev/null || { say "npm not found on PATH" >&2; exit 1; }
command -v python3 >/dev/null || { say "python3 not found on PATH" >&2; exit 1; }
say "node $(node --version), npm $(npm --version 2>/dev/null), $(python3 --version)"

cd "$dir"
export npm_config_yes=true npm_config_audit=false npm_config_fund=false \
       npm_config_update_notifier=false npm_config_progress=false

# --- Node -------------------------------------------------------------------
# npm writes node_modules/.package-lock.json after an install; if it is newer
# than package-lock.json and package.json, the tree is already in place.
hidden=node_modules/.package-lock.json
if [[ -f $hidden && -f package-lock.json && $hidden -nt package-lock.json && $hidden -nt package.json ]] \
   && npm ls --depth=0 >/dev/null 2>&1; then
  say "node_modules is up to date with package-lock.json; skipping npm"
elif [[ -f package-lock.json ]]; then
  say "npm ci (in $dir)"
  npm ci </dev/null
else
  say "no package-lock.json; npm install (in $dir)"
  npm install </dev/null
fi

# --- Python -----------------------------------------------------------------
venv="$dir/.venv"
if [[ ! -x $venv/bin/python ]]; then
  say "python3 -m venv $venv"
  python3 -m venv "$venv"
else
  say "venv $venv exists"
fi
stamp="$venv/.requirements.installed"
if [[ -f $stamp ]] && cmp -s "$stamp" requirements.txt; then
  say "venv already has requirements.txt installed; skipping pip"
else
  say "pip install -r requirements.txt (into $venv)"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r requirements.txt </dev/null
  cp requirements.txt "$stamp"
fi

say "check: server-everything entry point and the Python mcp package"
test -f node_modules/@modelcontextprotocol/server-everything/dist/index.js
node --input-type=module -e '
  import "@modelcontextprotocol/sdk/client/index.js";
  import { readFileSync } from "node:fs";
  const v = (p) => JSON.parse(readFileSync(`node_modules/@modelcontextprotocol/${p}/package.json`, "utf8")).version;
  console.log("[install-interop] TS SDK", v("sdk"), "/ server-everything", v("server-everything"));'
"$venv/bin/python" -c 'import importlib.metadata as m, mcp.client.streamable_http, mcp.client.sse; print("[install-interop] Python mcp", m.version("mcp"))'
say "done"
