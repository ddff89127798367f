#!/usr/bin/env bash
# The 10,000-peer load test (issue 16): builds folio-load (release) and runs it.
#   scripts/load.sh                     10,000 idle peers, 3,000 flood connections (about 2 min)
#   scripts/load.sh --peers 500         a quick run
#   scripts/load.sh --json              one JSON object (keys in docs/performance.md)
# Figures and how to read them: docs/performance.md, "10,000 peers (issue 16)".
set -euo pipefail
cd "$(dirname "$0")/.."
# Each process raises its own soft limit to the hard one; say early if that is too low.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt 14000 ]; then
  echo "load.sh: the open-file hard limit is $hard; the default run needs about 13,300 in the node's process" >&2
  echo "         (raise it, or run fewer peers: scripts/load.sh --peers 2000 --flood 1500)" >&2
fi
cargo build --release --locked -p folio-bench --bin folio-load
exec "${CARGO_TARGET_DIR:-target}/release/folio-load" "$@"
