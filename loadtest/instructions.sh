#!/usr/bin/env bash
# User-space instructions per plain HTTP request, counted by callgrind: a
# figure that does not move with the noise of a shared 2-core VM (CPU µs per
# request varies by 10-15% between runs; this by well under 1%), for telling
# whether a change to the request path helps.
#
#   loadtest/instructions.sh RUN_DIR [HOSTS] [PROXIES]
#
# RUN_DIR is the output of an earlier `loadtest/run.sh --tests plain` (its
# generated manifests, nginx.conf and wrk script are reused); HOSTS defaults
# to 1000, PROXIES to "vestibule bare nginx". Each proxy runs under valgrind
# with instrumentation off through the start and a 3 s warm-up, on for a 6 s
# wrk run (16 connections, Host rotating over all hosts), then off again.
# Kernel time is not counted: compare with CPU µs per request from run.sh.
# Writes RUN_DIR/instructions.tsv (one row per proxy and host count) and
# keeps each callgrind profile as RUN_DIR/callgrind-PROXY-HOSTS.out: read it
# by function with `callgrind_annotate --inclusive=yes FILE | head -60`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
run=${1:?usage: instructions.sh RUN_DIR [HOSTS] [PROXIES]}
n=${2:-1000}
proxies=${3:-vestibule bare nginx}
gateway=${VESTIBULE_GATEWAY:-${CARGO_TARGET_DIR:-$root/target}/release/vestibule-gateway}
bare=${VESTIBULE_BARE:-$(dirname "$gateway")/examples/bare_proxy}
port=${PROXY_PORT:-18181}
admin_port=$((port + 1))
tls_port=$((port + 2))

command -v valgrind >/dev/null 2>&1 || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
}
for f in "$run/upstream/nginx.conf" "$run/hosts-$n.lua"; do
  [ -f "$f" ] || { echo "missing $f: run loadtest/run.sh --tests plain --hosts $n first" >&2; exit 2; }
done

work=$(mktemp -d)
up_pid=
pid=
cleanup() {
  [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
  # TERM: the nginx master stops its worker too.
  [ -z "$up_pid" ] || { kill "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

# One upstream for every proxy: the run's nginx answering 200 on the run's
# addresses and port (the proxies' configs name them; one pool or many).
up_port=$(grep -oE 'listen 127\.0\.0\.1:[0-9]+' "$run/upstream/nginx.conf" | head -1 | cut -d: -f2)
sed -E "s#^pid .*#pid $work/up.pid;#" "$run/upstream/nginx.conf" > "$work/up.conf"
nginx -c "$work/up.conf" -e "$work/up.err" &
up_pid=$!

# One table per run: rows of other host counts are kept, this one's replaced.
out="$run/instructions.tsv"
{
  printf "proxy\thosts\trequests\tinstructions\tinstructions_per_req\n"
  if [ -f "$out" ]; then awk -F'\t' -v n="$n" 'NR > 1 && $2 != n' "$out"; fi
} > "$work/table"
cp "$work/table" "$out"
for proxy in $proxies; do
  cg="$work/$proxy.cg"
  vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$cg")
  case $proxy in
    vestibule)
      cp -r "$run/vestibule-$n-plain/manifests" "$work/manifests"
      RUST_LOG=warn "${vg[@]}" "$gateway" --manifests "$work/manifests" --http "127.0.0.1:$port" \
        --https "127.0.0.1:$tls_port" --admin "127.0.0.1:$admin_port" --threads 1 --no-access-log \
        > "$work/$proxy.log" 2>&1 &
      ;;
    bare)
      "${vg[@]}" "$bare" "127.0.0.1:$port" "127.0.0.1:$up_port" > "$work/$proxy.log" 2>&1 &
      ;;
    nginx)
      # One process (no master), so callgrind follows the worker.
      sed -E "s/listen 127.0.0.1:[0-9]+/listen 127.0.0.1:$port/; s#^pid .*#pid $work/ng.pid;#; s/^daemon off;/daemon off;\nmaster_process off;/" \
        "$run/nginx-$n-plain/nginx.conf" > "$work/ng.conf"
      "${vg[@]}" nginx -c "$work/ng.conf" -e "$work/ng.err" > "$work/$proxy.log" 2>&1 &
      ;;
    *) echo "unknown proxy $proxy" >&2; exit 2 ;;
  esac
  pid=$!
  ok=
  for _ in $(seq 1 240); do
    if curl -s -o /dev/null -m 2 -H "Host: h$n.bench.example.com" "http://127.0.0.1:$port/"; then ok=1; break; fi
    sleep 0.5
  done
  [ -n "$ok" ] || { echo "$proxy did not start under valgrind; log:" >&2; cat "$work/$proxy.log" >&2; exit 1; }
  wrk -t1 -c16 -d3s -s "$run/hosts-$n.lua" "http://127.0.0.1:$port/" > /dev/null
  callgrind_control -i on "$pid" > /dev/null 2>&1
  wrk -t1 -c16 -d6s -s "$run/hosts-$n.lua" "http://127.0.0.1:$port/" > "$work/$proxy.wrk"
  callgrind_control -i off "$pid" > /dev/null 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  sleep 1
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
  requests=$(grep -oE '^ *[0-9]+ requests' "$work/$proxy.wrk" | awk '{print $1}')
  bad=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' "$work/$proxy.wrk" | grep -oE '[0-9]+$' || true)
  [ -z "$bad" ] || { echo "$proxy answered $bad requests with an error status; not counted" >&2; exit 1; }
  dump=$(ls -t "$cg".* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
  per=$((total / requests))
  printf "%s\t%s\t%s\t%s\t%s\n" "$proxy" "$n" "$requests" "$total" "$per" >> "$out"
  cp "$dump" "$run/callgrind-$proxy-$n.out"
  printf "%-10s %8d requests  %9d instructions/request\n" "$proxy" "$requests" "$per"
  rm -rf "$work/manifests"
done
echo "wrote $out"
