#!/usr/bin/env bash
# Writes what the vendored crates differ from 0.9.1 + vendor/patches/* by as
# the next patch: vendor/patches/NNNN-NAME.patch, starting with the text of
# DESCRIPTION_FILE (patch ignores text before the first `---`). Edit the
# crates in vendor/ first; then run vendor/check.sh.
#   vendor/new-patch.sh NAME DESCRIPTION_FILE
set -euo pipefail
name=${1:?usage: new-patch.sh NAME DESCRIPTION_FILE}
about=${2:?usage: new-patch.sh NAME DESCRIPTION_FILE}
. "$(dirname "${BASH_SOURCE[0]}")/pristine.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/a" "$tmp/b"
pristine "$tmp/a"
for crate in "${crates[@]}"; do
  cp -r "vendor/$crate" "$tmp/b/$crate"
done
n=$(printf "%04d" $(( $(ls vendor/patches | wc -l) + 1 )))
out="vendor/patches/$n-$name.patch"
{
  cat "$about"
  echo
  (cd "$tmp" && diff -ruN a b || true) | grep -v '^diff -ruN' | sed -E 's#^(---|\+\+\+) ([ab]/[^\t]*)\t.*#\1 \2#'
} > "$out"
echo "wrote $out"
