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
# The web gateway's welcome page in a real headless browser (node/tests/browser.rs).
need chromium chromium
need chromedriver chromium-driver
# The robustness test holds about 2,400 sockets in one process.
ulimit -n 20000 2>/dev/null || ulimit -n 4096 2>/dev/null || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The embedded I2P router and its test network are behind a feature (see tests/README.md).
cargo clippy -p folio-transports -p folio-handlers -p folio-tests --features folio-tests/i2p-embedded \
  --all-targets --locked -- -D warnings

# The crates other programs depend on (folio-rpc, -rpc-macros, -transports, -handlers), checked
# as an embedder meets them: their docs as docs.rs builds them (every feature; a warning or a
# broken link is an error), each built alone with its own features (a workspace build unifies
# features and can hide a missing one), the oldest Rust they declare (rust-version, fetched by
# rustup when absent), and `cargo publish --dry-run`, which packages each and builds the package.
published="-p folio-rpc -p folio-rpc-macros -p folio-transports -p folio-handlers"
step "published crates: cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
  cargo doc --no-deps --all-features --locked $published
step "published crates: folio-rpc alone, folio-handlers alone without default features"
cargo build --locked -p folio-rpc
cargo build --locked -p folio-handlers --no-default-features
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
case "$msrv" in *.*.*) ;; *) msrv="$msrv.0" ;; esac
step "published crates: cargo check with Rust $msrv (their declared rust-version)"
rustup toolchain list | grep -q "^$msrv-" || rustup toolchain install "$msrv" --profile minimal
cargo "+$msrv" check --locked $published
step "published crates: cargo publish --dry-run"
cargo publish --dry-run --locked $published
# Their API against the baseline commit (scripts/api-baseline): a breaking change must come
# with a version that says so. Every feature, so that Tor and I2P items are checked too.
baseline=$(grep -v '^#' scripts/api-baseline | head -n1)
step "published crates: cargo semver-checks against ${baseline:0:12}"
if ! git cat-file -e "$baseline^{commit}" 2>/dev/null; then
  echo "the API baseline $baseline is not in this clone's history (a shallow clone?): git fetch --unshallow" >&2
  exit 1
fi
if ! cargo semver-checks --version >/dev/null 2>&1; then
  cargo install cargo-semver-checks --locked
fi
cargo semver-checks --all-features --baseline-rev "$baseline" $published

if [ "$FOLIO_FUZZ_SECONDS" != 0 ]; then
  step "fuzz smoke: every target for ${FOLIO_FUZZ_SECONDS}s"
  fuzz/run.sh "$FOLIO_FUZZ_SECONDS"
fi

step "cargo test: Tubs over a private network of embedded I2P routers (feature i2p-embedded)"
cargo test -p folio-tests --features i2p-embedded --test i2p_embedded --locked
cargo test -p folio-tests --features i2p-embedded --test i2p_reseed --locked

# Last, so that the run ends with the test runner's own summary.
step "cargo test"
cargo test --workspace --locked
