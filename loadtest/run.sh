#!/usr/bin/env bash
# Side-by-side load test of Vestibule, nginx and HAProxy on 127.0.0.1.
# Installs what it needs, builds the gateway (release), then runs bench.py,
# which writes results.tsv, report.md and PNG plots (via report.py).
#   loadtest/run.sh                          # 1,000 hosts, 10 s runs, 19 config changes
#   loadtest/run.sh --quick                  # 1,000 hosts, 3 s runs, 9 changes (< 5 min)
#   loadtest/run.sh --hosts 1000 --hosts 10000   # several host counts (also 100000)
#   loadtest/run.sh --tests plain            # skip the TLS configs (or --tests tls)
# Any other option goes to bench.py (see `python3 loadtest/bench.py --help`).
# Environment: VESTIBULE_GATEWAY=path skips the build and uses that binary;
# CARGO_TARGET_DIR is honoured. Results: loadtest/out/<timestamp>/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
[ -n "${VESTIBULE_GATEWAY:-}" ] || command -v cmake >/dev/null 2>&1 || need+=(cmake)

# A Python with cryptography (certificates) and matplotlib (plots): the one on
# PATH if it has both, else Debian's with its packages.
# The cluster-wide rate limit variant (--proxies ...,vestibule-redis) runs redis-server.
case " $* " in *vestibule-redis*) command -v redis-server >/dev/null 2>&1 || need+=(redis-server) ;; esac
py=python3
if ! $py -c 'import cryptography, matplotlib' >/dev/null 2>&1; then
  py=/usr/bin/python3
  /usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need+=(python3-cryptography)
  /usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1 || need+=(python3-matplotlib)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services on install; they are not ours to measure.
systemctl stop nginx haproxy >/dev/null 2>&1 || true

gateway=${VESTIBULE_GATEWAY:-}
if [ -z "$gateway" ]; then
  (cd "$root" && cargo build --release -p vestibule-gateway --bin vestibule-gateway --example bare_proxy)
  gateway="${CARGO_TARGET_DIR:-$root/target}/release/vestibule-gateway"
fi
exec "$py" "$here/bench.py" --gateway "$gateway" "$@"
