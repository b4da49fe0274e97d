#!/usr/bin/env bash
# `npm run demo`: installs what is missing (Debian packages, node_modules, the build), then runs the demo (dist/scripts/demo.js).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '%s\n' "$*" >&2; }
# Ctrl-C while installing or building stops here (npm exits with a status, which would not stop `set -e` reliably).
trap 'say "interrupted"; exit 130' INT TERM

# 1. Debian packages (installs them as root, else prints the apt-get line and fails).
bash scripts/install-system-deps.sh

# 2. Node 20 or later.
node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$node_major" -lt 20 ]; then
  say "fleece needs Node.js 20 or later (found: $(node --version 2>/dev/null || echo none)); on Debian 12: see https://nodejs.org/en/download"
  exit 1
fi

# 3. node_modules.
if [ ! -f node_modules/.package-lock.json ]; then
  say "node_modules is missing: running npm ci"
  npm ci --no-audit --no-fund
fi

# 4. The build, when dist is missing or older than any source.
stamp="dist/scripts/demo.js"
cli="${FLEECE_CLI:-dist/src/cli/main.js}"
needs_build=0
if [ ! -f "$stamp" ] || [ ! -f "$cli" ]; then
  needs_build=1
elif [ -n "$(find src native test scripts -name '*.ts' -newer "$stamp" -print -quit 2>/dev/null)" ] \
  || [ tsconfig.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  needs_build=1
fi
if [ "$needs_build" -eq 1 ]; then
  say "building (npm run build)"
  if ! npm run --silent build; then
    # tsc still emits JavaScript when it reports type errors; carry on only if what the demo runs is there.
    if [ -f "$stamp" ] && [ -f "$cli" ]; then
      say "warning: the typecheck reported errors (above); running the demo with the JavaScript it emitted"
      touch "$stamp"
    else
      say "the build failed and dist/ lacks the demo or the CLI: fix the errors above and run npm run demo again"
      exit 1
    fi
  fi
fi

# 5. The demo itself (exec: Ctrl-C reaches it directly and it cleans up).
exec node dist/scripts/demo.js "$@"
