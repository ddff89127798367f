#!/usr/bin/env bash
# The whole test suite: what README tells a newcomer to run and what CI runs.
#   scripts/test.sh                 everything
#   FOLIO_FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz smoke run
set -euo pipefail
cd "$(dirname "$0")/.."

: "${FOLIO_FUZZ_SECONDS:=10}"

step() { printf '\n==> %s\n' "$*"; }

# System packages the integration tests run for real (they fail loudly without them).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  step "installing $2 (for the tests that run a real $1)"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2"
}
need i2pd i2pd
need tor tor
# The robustness test holds about 2,400 sockets in one process.
ulimit -n 20000 2>/dev/null || ulimit -n 4096 2>/dev/null || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The embedded I2P router and its test network are behind a feature (see tests/README.md).
cargo clippy -p folio-transports -p folio-handlers -p folio-tests --features folio-tests/i2p-embedded \
  --all-targets --locked -- -D warnings

if [ "$FOLIO_FUZZ_SECONDS" != 0 ]; then
  step "fuzz smoke: every target for ${FOLIO_FUZZ_SECONDS}s"
  fuzz/run.sh "$FOLIO_FUZZ_SECONDS"
fi

step "cargo test: Tubs over a private network of embedded I2P routers (feature i2p-embedded)"
cargo test -p folio-tests --features i2p-embedded --test i2p_embedded --locked

# Last, so that the run ends with the test runner's own summary.
step "cargo test"
cargo test --workspace --locked
