#!/usr/bin/env bash
# Runs the vendored Pingora crates' own tests (their lib unit tests) with the
# carried patches: cargo refuses to test a patched dependency that has
# dev-dependencies from our workspace, so the three crates are copied into a
# scratch workspace of their own (patched against each other) and tested
# there. Slow (Pingora's dev-dependencies build: ~10 min on 2 cores), so not
# in CI.   vendor/test.sh [CRATE...]   (default: all three)
# 25 pingora-core tests need the internet (1.1.1.1, one.one.one.one) or a
# network that drops SYNs to TEST-NET addresses; offline the same 25 fail on
# the pristine 0.9.1 crates (checked on 2026-12-05).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ $# -gt 0 ]; then crates=("$@"); else crates=(pingora-http pingora-core pingora-proxy); fi
work=${VENDOR_TEST_DIR:-$(mktemp -d)}
mkdir -p "$work"
for c in pingora-core pingora-proxy pingora-http; do
  rm -rf "${work:?}/$c"
  cp -r "$root/vendor/$c" "$work/$c"
done
cat > "$work/Cargo.toml" <<TOML
[workspace]
members = ["pingora-core", "pingora-proxy", "pingora-http"]
resolver = "2"
[patch.crates-io]
pingora-core = { path = "pingora-core" }
pingora-proxy = { path = "pingora-proxy" }
pingora-http = { path = "pingora-http" }
TOML
cp "$root/Cargo.lock" "$work/Cargo.lock"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$work/target}
# The features the workspace builds them with (Cargo.toml), so the tests
# gated on a TLS backend run too.
features_of() {
  case $1 in
    pingora-core) echo rustls,connection_filter ;;
    pingora-proxy) echo rustls ;;
    *) echo "" ;;
  esac
}
status=0
for c in "${crates[@]}"; do
  (cd "$work" && cargo test -p "$c" --lib --no-fail-fast --features "$(features_of "$c")") || status=1
done
exit $status
