#!/usr/bin/env bash
# Proves vendor/pingora-{core,proxy,http} are crates.io's 0.9.1
# crates plus the patches in vendor/patches, in order: rebuilds them from
# the registry copies (fetched when missing) and diffs. Patch paths
# start with the crate's directory. Run from the repository root.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/pristine.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pristine "$tmp"
for crate in "${crates[@]}"; do
  diff -r "$tmp/$crate" "vendor/$crate"
done
echo "vendor/{${crates[*]}} = $version + $(ls vendor/patches | wc -l) patch(es)"
