#!/usr/bin/env bash
# Issue 17's real-daemon check, before and after: a `--listen=tor --hide-ip` grid of `tahoe run`
# processes on a private Tor network on 127.0.0.1 uploads and downloads a small file (one
# segment, one byte above the LIT size) over warm connections, and the times are given in
# round trips of the grid's onion circuits. Tor's circuit setup is measured apart.
#
#   scripts/tor-grid-rtts.sh                     base 6647c7e against the working tree, 3 runs each
#   scripts/tor-grid-rtts.sh --runs 5            5 grids of each build, alternating
#   scripts/tor-grid-rtts.sh --files 9           9 timed uploads and downloads per grid (default 7)
#   scripts/tor-grid-rtts.sh --servers 4         storage nodes (default 3; shares 2-of-SERVERS)
#   scripts/tor-grid-rtts.sh --base REV          another base commit
#   scripts/tor-grid-rtts.sh --only-before       one build only (--only-after likewise)
#   scripts/tor-grid-rtts.sh --json-file f.json  also write every sample as JSON
#   scripts/tor-grid-rtts.sh --summarize f.json  only print the table of such a file
#   scripts/tor-grid-rtts.sh --rebuild           rebuild the base's binaries
#   scripts/tor-grid-rtts.sh --keep              keep the scratch directory (nodes' logs; the
#                                                client node logs at $CLIENT_RUST_LOG, default warn)
#   scripts/tor-grid-rtts.sh --after-bin DIR     use DIR/tahoe and DIR/folio-tor-grid as "after"
#                                                (built as below) instead of building this tree
#
# One private Tor network (tests/scripts/tor-private-network.sh: 3 authorities, 2 relays, one
# client tor) serves every grid. Per run and build: an introducer, SERVERS storage nodes and a
# client node (create-client, no storage), all `--hide-ip` and all using the network's client
# tor through its control port (`--tor-control-port`, as node/tests/hidden.rs's
# hidden_grid_over_a_real_tor_network does); the storage nodes and the introducer
# `--listen=tor`. Once the client sees every storage server connected, folio-tor-grid
# (bench/src/bin/folio-tor-grid.rs) measures: the RTT (warm get_version calls from its own Tub
# to each storage server's onion FURL, through the same tor), a fresh onion connection to a
# first answer, and the client node's own grid time (TransferReport::seconds) for uploads and
# downloads through its control port, after one untimed upload and download.
#
# Both builds are `tahoe` and folio-tor-grid, release, `--no-default-features` (no embedded
# arti or I2P router: a system tor is all this needs). "Before" is built in a git worktree of
# the base under /var/tmp with this tree's bench/ copied in, in $FOLIO_BASE_TARGET_DIR
# (default /var/tmp/folio-base-target), cached per base commit and bench sources; the
# worktree is removed at the end. "After" is this tree, in $CARGO_TARGET_DIR (default
# /var/tmp/folio-target). Figures: docs/performance.md, "Slow links (issue 17)".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/base-build.sh
source "$root/scripts/lib/base-build.sh"

base=6647c7e
runs=3
files=7
servers=3
json_file=
sides="before after"
rebuild=0
after_bin=
keep=0
summarize_file=
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --json-file) json_file=$2; shift 2 ;;
    --only-before) sides=before; shift ;;
    --only-after) sides=after; shift ;;
    --rebuild) rebuild=1; shift ;;
    --after-bin) after_bin=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --summarize) summarize_file=$2; shift 2 ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "tor-grid-rtts.sh: unknown argument $1 (--help)" >&2; exit 1 ;;
  esac
done
for tool in tor tor-gencert jq python3; do
  command -v "$tool" >/dev/null || { echo "tor-grid-rtts.sh: $tool is missing (scripts/test.sh installs tor)" >&2; exit 1; }
done

after_target=${CARGO_TARGET_DIR:-/var/tmp/folio-target}
base_target=${FOLIO_BASE_TARGET_DIR:-/var/tmp/folio-base-target}
distinct_target_dirs "$base_target" "$after_target"
base_commit=$(git rev-parse --verify "$base^{commit}")
wt=
pids=()
net_up=0
log() { echo "tor-grid-rtts: [$(date -u +%T)] $*" >&2; }

# summarize FILE: the table of figures from the samples in FILE (written by --json-file).
summarize() {
python3 - "$1" <<'EOF'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
raw = d["raw"]
sides = [s for s in ("before", "after") if s in raw]

def rng(v, f):
    return f"{f(statistics.median(v))} ({f(min(v))}–{f(max(v))})"

ms = lambda x: f"{x * 1e3:.0f} ms"
r2 = lambda x: f"{x:.2f}"
# (label, key, in RTT too)
figures = [
    ("onion circuit RTT: one call, warm (each grid's median)", None, False),
    ("two calls in one flight, warm", "s_two_calls", True),
    ("fresh onion connection → first answer (Tor's circuit setup)", "s_fresh_first_answer", True),
    ("download, small file: client node's grid time (tahoe get)", "s_small_get", True),
    ("  tahoe get's wall clock (control connection too)", "s_small_get_wall", False),
    ("download, small file: in-process, same connections as the RTT", "s_own_get", True),
    ("upload, small file: client node's grid time (tahoe put)", "s_small_put", True),
    ("upload, small file: in-process, same connections as the RTT", "s_own_put", True),
]
rows = []
for label, key, in_rtt in figures:
    cells, cells_r = [], []
    for s in sides:
        v, vr = [], []
        for r in raw[s]:
            # Each grid's RTT: the median of its warm single calls; its figures are read in it.
            m = statistics.median(r["s_rtt"])
            if key is None:
                v.append(m)
            elif key in r:
                v += r[key]
                vr += [x / m for x in r[key]]
        cells.append(rng(v, ms) if v else "—")
        cells_r.append(rng(vr, r2) if vr else "—")
    rows.append([label] + cells)
    if in_rtt:
        rows.append(["  in RTT"] + cells_r)
size = raw[sides[0]][0]["file_bytes"]
after = d["after_commit"]
after = after if after.startswith("(") else after[:12] + ("+" if after.endswith("uncommitted") else "")
print()
print(f"before: {d['base_commit'][:12]}; after: {after}; {d['runs']} grids per build, {d['files']} "
      f"downloads and uploads each way; a {size}-byte file (one segment), 2-of-{d['servers']} on "
      f"{d['servers']} storage nodes; medians (min–max) over every sample")
print()
hdr = ["figure"] + sides
w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
print("| " + " | ".join(h.ljust(x) for h, x in zip(hdr, w)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in rows:
    print("| " + " | ".join(c.ljust(x) for c, x in zip(r, w)) + " |")
EOF
}
if [ -n "$summarize_file" ]; then summarize "$summarize_file"; exit 0; fi

stop_nodes() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_nodes
  if [ "$net_up" = 1 ]; then NET="$work/tornet" BASE="$tor_base" bash tests/scripts/tor-private-network.sh stop >/dev/null 2>&1 || true; fi
  if [ -n "$wt" ] && [ -d "$wt" ]; then git -C "$root" worktree remove --force "$wt" || true; fi
  git -C "$root" worktree prune || true
  if [ "$keep" = 1 ]; then echo "tor-grid-rtts: kept $work" >&2; else rm -rf "$work"; fi
}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/folio-tor-grid.XXXXXX")
trap cleanup EXIT

build_args=(build --release -p folio-node --bin tahoe -p folio-bench --bin folio-tor-grid --no-default-features)

# --- "before": the base commit with this tree's bench -------------------------------------
if [[ " $sides " == *" before "* ]]; then
  # Built in a worktree of the base, cached per base commit and bench sources
  # (scripts/lib/base-build.sh).
  base_build tor-grid "tahoe and folio-tor-grid" tahoe folio-tor-grid -- \
    nice -n 10 cargo "${build_args[@]}"
  cached=$base_bin_dir
  [ "$base_reused" = 0 ] || log "using the base's binaries built earlier: $cached"
  mkdir -p "$work/bin-before"
  cp "$cached/tahoe" "$cached/folio-tor-grid" "$work/bin-before/"
fi

# --- "after": this tree -------------------------------------------------------------------
after_commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain 2>/dev/null)" ] || after_commit="$after_commit+uncommitted"
if [[ " $sides " == *" after "* ]]; then
  mkdir -p "$work/bin-after"
  if [ -n "$after_bin" ]; then
    log "using the \"after\" binaries in $after_bin"
    after_commit="(binaries in $after_bin)"
  else
    log "building this tree's tahoe and folio-tor-grid in $after_target"
    CARGO_TARGET_DIR="$after_target" nice -n 10 cargo "${build_args[@]}"
    after_bin="$after_target/release"
  fi
  cp "$after_bin/tahoe" "$after_bin/folio-tor-grid" "$work/bin-after/"
fi

# --- the private Tor network --------------------------------------------------------------
# Ports BASE..BASE+310 (below the ephemeral range), away from the tests' 20000-31500.
tor_base=$((12000 + ($$ % 8) * 500))
export NET="$work/tornet" BASE="$tor_base"
started=$(date +%s)
net_up=1
bash tests/scripts/tor-private-network.sh setup >"$work/tornet.log" 2>&1
bash tests/scripts/tor-private-network.sh start >>"$work/tornet.log" 2>&1
if ! bash tests/scripts/tor-private-network.sh wait 180 >>"$work/tornet.log" 2>&1; then
  cat "$work/tornet.log" >&2
  echo "tor-grid-rtts.sh: the private Tor network did not come up" >&2
  exit 1
fi
unset NET BASE
control="tcp:127.0.0.1:$((tor_base + 205))"
socks="127.0.0.1:$((tor_base + 305))"
log "private Tor network up in $(( $(date +%s) - started )) s (control $control, SOCKS $socks)"

# --- one grid, measured -------------------------------------------------------------------
# run_grid SIDE RUN: writes $work/SIDE.RUN.json.
run_grid() {
  local side=$1 i=$2 dir="$work/grid-$1-$2" tahoe="$work/bin-$1/tahoe" t0
  t0=$(date +%s.%N)
  mkdir -p "$dir"
  export RUST_LOG=warn
  "$tahoe" create-introducer --listen=tor --hide-ip --tor-control-port="$control" "$dir/introducer" >/dev/null
  "$tahoe" run "$dir/introducer" >"$dir/introducer.log" 2>&1 & pids+=($!)
  local furl_file="$dir/introducer/private/introducer.furl" furl
  for _ in $(seq 1 1200); do [ -s "$furl_file" ] && break; sleep 0.1; done
  [ -s "$furl_file" ] || { echo "the introducer wrote no FURL within 120 s" >&2; cat "$dir/introducer.log" >&2; return 1; }
  furl=$(cat "$furl_file")
  local enc=(--shares-needed=2 --shares-happy="$servers" --shares-total="$servers")
  local furls=() n
  for n in $(seq 1 "$servers"); do
    "$tahoe" create-node --webport=none --listen=tor --hide-ip --tor-control-port="$control" --nickname="s$n" \
      --introducer="$furl" "${enc[@]}" "$dir/s$n" >/dev/null
    "$tahoe" run "$dir/s$n" >"$dir/s$n.log" 2>&1 & pids+=($!)
  done
  "$tahoe" create-client --webport=none --hide-ip --tor-control-port="$control" --nickname=client \
    --introducer="$furl" "${enc[@]}" "$dir/client" >/dev/null
  RUST_LOG=${CLIENT_RUST_LOG:-warn} "$tahoe" run "$dir/client" >"$dir/client.log" 2>&1 & pids+=($!)
  for n in $(seq 1 "$servers"); do
    local f="$dir/s$n/private/storage.furl"
    for _ in $(seq 1 1200); do [ -s "$f" ] && break; sleep 0.1; done
    [ -s "$f" ] || { echo "s$n wrote no storage FURL within 120 s" >&2; cat "$dir/s$n.log" >&2; return 1; }
    furls+=(--storage-furl "$(cat "$f")")
  done
  # The client sees every storage server connected: its connections are up.
  local deadline=$(( $(date +%s) + 300 )) up=0
  while [ "$(date +%s)" -lt "$deadline" ]; do
    up=$("$tahoe" status --json --timeout 10 "$dir/client" 2>/dev/null \
      | jq '[.storage_servers[] | select(.connected == true)] | length' 2>/dev/null || echo 0)
    [ "$up" = "$servers" ] && break
    sleep 1
  done
  if [ "$up" != "$servers" ]; then
    echo "the client saw $up of $servers storage servers within 300 s" >&2
    "$tahoe" status --json --timeout 10 "$dir/client" >&2 || true
    return 1
  fi
  log "$side, run $i: grid up in $(python3 -c "import time; print(f'{time.time() - $t0:.0f}')") s; measuring"
  "$work/bin-$side/folio-tor-grid" --client "$dir/client" "${furls[@]}" --socks "$socks" \
    --files "$files" --scratch "$dir/scratch" >"$work/$side.$i.json"
  jq -c '{rtt_ms: (.s_rtt | sort | .[length/2|floor] * 1000), get_s: .s_small_get, put_s: .s_small_put}' "$work/$side.$i.json" >&2
  stop_nodes
  unset RUST_LOG
}

for i in $(seq 1 "$runs"); do
  order=$sides
  [ $((i % 2)) = 0 ] && order=$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' ')
  for side in $order; do
    run_grid "$side" "$i"
  done
done
log "measured in $(( $(date +%s) - started )) s"

# The samples as JSON, then the table (also: --summarize FILE, from a file written before).
python3 - "$work" "$runs" "$base_commit" "$after_commit" "$sides" "$servers" "$files" >"$work/all.json" <<'EOF'
import json, sys
work, runs, base_commit, after_commit, sides, servers, files = sys.argv[1:]
raw = {s: [json.load(open(f"{work}/{s}.{i}.json")) for i in range(1, int(runs) + 1)] for s in sides.split()}
json.dump({"base_commit": base_commit, "after_commit": after_commit, "runs": int(runs),
           "servers": int(servers), "files": int(files), "raw": raw}, sys.stdout, indent=1)
EOF
[ -z "$json_file" ] || { cp "$work/all.json" "$json_file"; echo "(samples as JSON in $json_file)"; }
summarize "$work/all.json"
