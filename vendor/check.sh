#!/usr/bin/env bash
# Proves vendor/pingora-core is crates.io's pingora-core 0.9.1 plus the
# patches in vendor/patches, in order: rebuilds it from the registry copy
# (fetched by any cargo build) and diffs. Run from the repository root.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
if ! ls -d "$registry"/*/pingora-core-0.9.1 >/dev/null 2>&1; then
  # The workspace builds the vendored copy, so fetch the pristine one.
  cargo new -q --lib "$tmp/fetch"
  (cd "$tmp/fetch" && cargo add -q pingora-core@=0.9.1 --no-default-features && cargo fetch -q)
fi
src=$(ls -d "$registry"/*/pingora-core-0.9.1 | head -1)
cp -r "$src" "$tmp/pingora-core"
for p in vendor/patches/*.patch; do
  patch -s -d "$tmp/pingora-core" -p1 < "$p"
done
diff -r "$tmp/pingora-core" vendor/pingora-core && echo "vendor/pingora-core = pingora-core 0.9.1 + $(ls vendor/patches | wc -l) patch(es)"
