#!/usr/bin/env bash
# Issue 17's figures, before and after, in one run: folio-bench's slow-link figures (Tor-like
# and I2P-like links, src/slow.rs) and the sequential-bulk ratio against tarpc, measured with
# the code of a base commit ("before") and with the working tree ("after").
#
#   scripts/slowlink-bench.sh                      base 6647c7e against the working tree (~5 min + builds)
#   scripts/slowlink-bench.sh REV                  another base commit (or --base REV)
#   scripts/slowlink-bench.sh --runs 3             3 runs of each build, alternating; medians
#   scripts/slowlink-bench.sh --json-file f.json   also write the figures as JSON
#   scripts/slowlink-bench.sh --quick              fewer samples, an 8 MiB large file
#   scripts/slowlink-bench.sh --only slow-tor      some figures only (slow-tor, slow-i2p, bulk-seq)
#   scripts/slowlink-bench.sh --no-pipelining      build "after" without the bench's
#                                                  `pipelining` feature (Tub::get_promised)
#   scripts/slowlink-bench.sh --only-before        measure the base only (--only-after likewise)
#   scripts/slowlink-bench.sh -- --slow-connects 9 anything after -- goes to folio-bench
#
# "Before" is built in a git worktree of the base commit under /var/tmp, with this tree's
# bench/ and tests/src/slowlink.rs copied in, `--no-default-features`, in its own target
# directory ($FOLIO_BASE_TARGET_DIR, default /var/tmp/folio-base-target); the binary is kept
# there per base commit and bench sources, so a second run does not rebuild it (--rebuild
# does). The worktree is removed when the script ends. "After" is built in this tree
# ($CARGO_TARGET_DIR, default /var/tmp/folio-target). Only the bench crate is built, release.
# Figures and how to read them: docs/performance.md, "Slow links (issue 17)".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=lib/base-build.sh
source "$root/scripts/lib/base-build.sh"

base=6647c7e
runs=1
json_file=
pipelining=1
sides="before after"
rebuild=0
only=slow-tor,slow-i2p,bulk-seq
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --json-file) json_file=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --no-pipelining) pipelining=0; shift ;;
    --only-before) sides=before; shift ;;
    --only-after) sides=after; shift ;;
    --rebuild) rebuild=1; shift ;;
    --quick)
      bench_args+=(--slow-connects 2 --slow-small-files 2 --slow-bulk-mib 8 --bulk-seq-mib 128)
      shift ;;
    --) shift; bench_args+=("$@"); break ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "slowlink-bench.sh: unknown option $1 (--help)" >&2; exit 1 ;;
    *) base=$1; shift ;;
  esac
done

after_target=${CARGO_TARGET_DIR:-/var/tmp/folio-target}
base_target=${FOLIO_BASE_TARGET_DIR:-/var/tmp/folio-base-target}
distinct_target_dirs "$base_target" "$after_target"
base_commit=$(git rev-parse --verify "$base^{commit}")
work=$(mktemp -d /var/tmp/folio-slowlink.XXXXXX)
wt=
cleanup() {
  if [ -n "$wt" ] && [ -d "$wt" ]; then
    git -C "$root" worktree remove --force "$wt" || true
  fi
  git -C "$root" worktree prune || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "slowlink-bench: $*" >&2; }

# --- "before": the base commit with this tree's bench -------------------------------------
if [[ " $sides " == *" before "* ]]; then
  # Built in a worktree of the base, cached per base commit and bench sources
  # (scripts/lib/base-build.sh).
  base_build slowlink-bench "folio-bench (--no-default-features)" folio-bench -- \
    cargo build --release -p folio-bench --bin folio-bench --no-default-features
  cached="$base_bin_dir/folio-bench"
  [ "$base_reused" = 0 ] || log "using the base's folio-bench built earlier: $cached"
  cp "$cached" "$work/folio-bench-before"
fi

# --- "after": this tree -------------------------------------------------------------------
if [[ " $sides " == *" after "* ]]; then
  features=()
  [ "$pipelining" = 1 ] || features=(--no-default-features)
  log "building this tree's folio-bench ${features[*]:-(default features)} in $after_target"
  CARGO_TARGET_DIR="$after_target" \
    cargo build --release -p folio-bench --bin folio-bench "${features[@]}"
  cp "$after_target/release/folio-bench" "$work/folio-bench-after"
fi
after_commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . 2>/dev/null || after_commit="$after_commit+uncommitted"

slow_only=$(tr ',' '\n' <<<"$only" | grep '^slow-' | paste -sd, - || true)
lan_only=$(tr ',' '\n' <<<"$only" | grep -v '^slow-' | paste -sd, - || true)

# --- the runs, alternating ----------------------------------------------------------------
started=$(date +%s)
for i in $(seq 1 "$runs"); do
  order=$sides
  [ $((i % 2)) = 0 ] && order=$(echo "$sides" | tr ' ' '\n' | tac | tr '\n' ' ')
  for side in $order; do
    log "run $i/$runs: $side"
    parts=()
    # The slow-link figures: latency-bound, on the multi-threaded runtime.
    if [ -n "$slow_only" ]; then
      "$work/folio-bench-$side" --only "$slow_only" --json "${bench_args[@]}" >"$work/$side.$i.slow.json"
      parts+=("$work/$side.$i.slow.json")
    fi
    # The sequential bulk ratio: CPU-bound, both ends pinned to CPU 0 as the bench's other
    # ratios are read (docs/performance.md).
    if [ -n "$lan_only" ]; then
      "$work/folio-bench-$side" --only "$lan_only" --one-cpu --json "${bench_args[@]}" >"$work/$side.$i.lan.json"
      parts+=("$work/$side.$i.lan.json")
    fi
    jq -s add "${parts[@]}" >"$work/$side.$i.json"
    jq -c . "$work/$side.$i.json" >&2
  done
done
log "measured in $(( $(date +%s) - started )) s"

python3 - "$work" "$runs" "$base_commit" "$after_commit" "$json_file" "$sides" <<'EOF'
import json, statistics, sys
work, runs, base_commit, after_commit, json_file, sides = sys.argv[1:]
runs = int(runs)
sides = sides.split()
raw = {s: [json.load(open(f"{work}/{s}.{i}.json")) for i in range(1, runs + 1)] for s in sides}

def med(side, key):
    vals = [r[key] for r in raw.get(side, []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None

keys = sorted({k for rs in raw.values() for r in rs for k in r})
medians = {s: {k: med(s, k) for k in keys} for s in sides}

# figure, limit, target, key, (target test)
rows = []
for link, sfx in (("Tor-like, RTT 300 ms, 8 MiB/s", ""), ("I2P-like, RTT 1 s, 2 MiB/s", "_i2p")):
    m = medians.get("after", medians[sides[0]])
    mib = m.get("slow_bulk_mib" + sfx) or 16
    # Nothing finishes sooner than its bytes' time on the link plus one round trip.
    best = m.get("goodput_ratio_best" + sfx)
    glimit = "1.0" if best is None else f"1.0 (best {best:.2f})"
    rows += [
        (f"{link}", None, None, None, None),
        ("fresh TCP connection → first answer", "3 RTT", "≤ 3.2 RTT", "rtts_connect_first_answer" + sfx, lambda v: v <= 3.2),
        ("download, small file (one segment)", "1 RTT", "≤ 1.3 RTT", "rtts_small_get" + sfx, lambda v: v <= 1.3),
        ("upload, small file", "1 RTT", "≤ 1.3 RTT", "rtts_small_put" + sfx, lambda v: v <= 1.3),
        (f"{mib:g} MiB upload: limit ÷ time", glimit, "≥ 0.8", "goodput_ratio_put" + sfx, lambda v: v >= 0.8),
        (f"{mib:g} MiB download: limit ÷ time", glimit, "≥ 0.8", "goodput_ratio_get" + sfx, lambda v: v >= 0.8),
        ("  upload: (limit + 1 RTT) ÷ time", "1.0", "", "goodput_ratio_put_rtt" + sfx, None),
        ("  download: (limit + 1 RTT) ÷ time", "1.0", "", "goodput_ratio_get_rtt" + sfx, None),
    ]
rows += [
    ("127.0.0.1", None, None, None, None),
    ("bulk_seq_ratio_vs_tarpc (64 KiB, one at a time)", "—", "≥ 1.0", "bulk_seq_ratio_vs_tarpc", lambda v: v >= 1.0),
    ("  Folio, MiB/s", "", "", "bulk_seq_mib_s", None),
    ("  tarpc 0.38, MiB/s", "", "", "tarpc_bulk_seq_mib_s", None),
]

def fmt(v, key):
    if v is None:
        return "—"
    return f"{v:.0f}" if key.endswith("mib_s") else f"{v:.2f}"

def measured(r):
    return any(medians[s].get(r[3]) is not None for s in sides)
# Rows measured, and a group's heading only if a row of its group was.
present = []
for i, r in enumerate(rows):
    if r[3] is not None:
        if measured(r):
            present.append(r)
        continue
    group = []
    for q in rows[i + 1:]:
        if q[3] is None:
            break
        group.append(q)
    if any(measured(q) for q in group):
        present.append(r)
print()
print(f"before: {base_commit[:12]} (bench --no-default-features); after: {after_commit[:12]}{'+' if after_commit.endswith('uncommitted') else ''}"
      + (f"; pipelining feature {'on' if medians['after'].get('pipelining') else 'off'}" if 'after' in medians and medians['after'].get('pipelining') is not None else "")
      + (f"; medians of {runs} runs" if runs > 1 else ""))
print()
hdr = ["figure", "limit", "target"] + sides
out = []
for name, limit, target, key, test in present:
    if key is None:
        out.append([f"**{name}**", "", ""] + [""] * len(sides))
        continue
    cells = []
    for s in sides:
        v = medians[s].get(key)
        mark = ""
        if v is not None and test is not None and s == sides[-1]:
            mark = " ✓" if test(v) else " ✗"
        cells.append(fmt(v, key) + mark)
    out.append([name, limit, target] + cells)
widths = [max(len(r[i]) for r in out + [hdr]) for i in range(len(hdr))]
print("| " + " | ".join(h.ljust(w) for h, w in zip(hdr, widths)) + " |")
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in out:
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
print()
# The large file's times, for reading the ratios.
for sfx, link in (("", "Tor"), ("_i2p", "I2P")):
    for s in sides:
        m = medians[s]
        if m.get("s_bulk_put" + sfx) is None:
            continue
        print(f"{link}, {s}: {m['slow_bulk_mib' + sfx]:g} MiB upload {m['s_bulk_put' + sfx]:.2f} s "
              f"(limit {m['s_bulk_limit_put' + sfx]:.2f} s), download {m['s_bulk_get' + sfx]:.2f} s "
              f"(limit {m['s_bulk_limit_get' + sfx]:.2f} s)")
if json_file:
    with open(json_file, "w") as f:
        json.dump({"base_commit": base_commit, "after_commit": after_commit, "runs": runs,
                   "medians": medians, "raw": raw}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"\n(JSON in {json_file})")
EOF
