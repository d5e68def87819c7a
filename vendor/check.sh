#!/usr/bin/env bash
# Proves vendor/pingora-{core,proxy,http} are crates.io's 0.9.1
# crates plus the patches in vendor/patches, in order: rebuilds them from
# the registry copies (fetched by any cargo build) and diffs. Patch paths
# start with the crate's directory. Run from the repository root.
set -euo pipefail
version=0.9.1
crates=(pingora-core pingora-proxy pingora-http)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
registry="${CARGO_HOME:-$HOME/.cargo}/registry/src"
for crate in "${crates[@]}"; do
  if ! ls -d "$registry"/*/"$crate-$version" >/dev/null 2>&1; then
    # The workspace builds the vendored copies, so fetch the pristine ones.
    [ -d "$tmp/fetch" ] || cargo new -q --lib "$tmp/fetch"
    (cd "$tmp/fetch" && cargo add -q "$crate@=$version" --no-default-features && cargo fetch -q)
  fi
  src=$(ls -d "$registry"/*/"$crate-$version" | head -1)
  cp -r "$src" "$tmp/$crate"
done
for p in vendor/patches/*.patch; do
  patch -s -d "$tmp" -p1 < "$p"
done
for crate in "${crates[@]}"; do
  diff -r "$tmp/$crate" "vendor/$crate"
done
echo "vendor/{${crates[*]}} = $version + $(ls vendor/patches | wc -l) patch(es)"
