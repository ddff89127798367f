# The "before" build of the before-and-after scripts (scripts/slowlink-bench.sh,
# scripts/tor-grid-rtts.sh): binaries of a base commit with this tree's bench.
#
# Sourced, not run. The sourcing script runs in the repository's root ($root) and sets
#   root          the repository
#   work          its scratch directory (the worktree goes in $work/base)
#   base_commit   the base commit, a full hash
#   base_target   the base's cargo target directory
#   rebuild       1 to build even when a cached build exists
#   wt            empty; the worktree while one exists, for the script's EXIT trap to remove
# and a `log` function for its messages.

# base_build CACHE WHAT BIN... -- COMMAND...
#
# Makes $base_target/CACHE/<base commit>-<bench sources hash>/ hold each BIN as built from
# the base commit with this tree's bench/ and tests/src/slowlink.rs copied in, unless it
# already does (and $rebuild is not 1): then it builds them in a git worktree of the base
# commit under $work, running COMMAND (a cargo build, maybe behind `nice`) there with
# CARGO_TARGET_DIR=$base_target, copies each BIN from $base_target/release, and removes the
# worktree. WHAT names the build in the log ("building the base's WHAT in $base_target").
# Sets base_bin_dir to that directory, and base_reused to 1 if its binaries were built
# before (nothing is logged then: the caller says so) or 0 if they were built now.
base_build() {
  local cache=$1 what=$2 bins=() bin sources_hash stamp commit_time need=0
  shift 2
  while [ $# -gt 0 ] && [ "$1" != -- ]; do bins+=("$1"); shift; done
  [ $# -gt 0 ] || { echo "base_build: no -- before the build command" >&2; return 1; }
  shift
  # The bench sources that go into the base build; the binaries are cached on their hash.
  sources_hash=$(find bench tests/src/slowlink.rs -type f -not -path '*/target/*' -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
  base_bin_dir="$base_target/$cache/${base_commit:0:12}-$sources_hash"
  for bin in "${bins[@]}"; do [ -x "$base_bin_dir/$bin" ] || need=1; done
  if [ "$rebuild" != 1 ] && [ "$need" = 0 ]; then
    base_reused=1
    return 0
  fi
  base_reused=0
  wt="$work/base"
  log "worktree of ${base_commit:0:12} in $wt"
  git -C "$root" worktree add --detach --quiet "$wt" "$base_commit"
  # A new worktree's files are new to cargo, which would rebuild every crate of the base.
  # When the target directory was last built from this same commit (by either script), give
  # them the commit's time instead: only the bench, copied in below (so new files), and what
  # else changed are rebuilt. The stamp is removed while a build runs: an interrupted one
  # never counts as built.
  stamp="$base_target/slowlink-bench/last-base-commit"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$base_commit" ]; then
    commit_time=$(git show -s --format=%ct "$base_commit")
    (cd "$wt" && git ls-files -z | xargs -0 touch -h -d "@$commit_time")
  fi
  rm -rf "$wt/bench"
  cp -r "$root/bench" "$wt/bench"
  mkdir -p "$wt/tests/src" "$base_target/slowlink-bench"
  cp "$root/tests/src/slowlink.rs" "$wt/tests/src/slowlink.rs"
  rm -f "$stamp"
  log "building the base's $what in $base_target"
  (cd "$wt" && CARGO_TARGET_DIR="$base_target" "$@")
  echo "$base_commit" >"$stamp"
  mkdir -p "$base_bin_dir"
  for bin in "${bins[@]}"; do cp "$base_target/release/$bin" "$base_bin_dir/"; done
  git -C "$root" worktree remove --force "$wt"
  wt=
}

# distinct_target_dirs BASE_TARGET AFTER_TARGET: refuses one directory for both builds.
# cargo puts each build's binary at the same path (release/folio-bench); after a build of
# the base there, this tree's build is still "fresh" to cargo and does not relink, so
# "after" would silently run the base's binary.
distinct_target_dirs() {
  if [ "$(realpath -m "$1")" = "$(realpath -m "$2")" ]; then
    echo "the base's target directory (FOLIO_BASE_TARGET_DIR=$1) must differ from this" \
      "tree's (CARGO_TARGET_DIR=$2): one directory would leave the base's binary in" \
      "place of this tree's" >&2
    exit 2
  fi
}
