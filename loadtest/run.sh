#!/usr/bin/env bash
# Side-by-side load test of Vestibule, nginx and HAProxy on 127.0.0.1.
# Installs what it needs, builds the gateway (release), then runs bench.py.
#   loadtest/run.sh                 # 1,000 hosts, 10 s per run
#   loadtest/run.sh --quick         # 1,000 hosts, 3 s per run
#   loadtest/run.sh --hosts 10000   # more hosts (repeatable: --hosts 1000 --hosts 10000)
# Results: loadtest/out/<timestamp>/{results.tsv,report.md}
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi
# Debian starts the packaged services on install; they are not ours to measure.
systemctl stop nginx haproxy >/dev/null 2>&1 || true

(cd "$root" && cargo build --release -p vestibule-gateway --bin vestibule-gateway)
exec python3 "$here/bench.py" --gateway "$root/target/release/vestibule-gateway" "$@"
