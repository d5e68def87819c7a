#!/usr/bin/env bash
# User-space instructions per plain HTTP request, counted by callgrind: a
# figure that does not move with the noise of a shared 2-core VM (CPU µs per
# request varies by 10-15% between runs; this by well under 1%), for telling
# whether a change to the request path helps.
#
#   loadtest/instructions.sh RUN_DIR [HOSTS] [PROXIES] [TEST]
#
# RUN_DIR is the output of an earlier `loadtest/run.sh` (its generated
# manifests, nginx.conf and wrk script are reused); HOSTS defaults to 1000,
# PROXIES to "vestibule bare nginx", TEST to plain (HTTP/1.1, wrk with the
# Host rotating over all hosts); tls_h1 and tls_h2 load the TLS configs with
# h2load (4 processes, each its own SNI host, 4 connections each, one request
# in flight per connection; bare has no TLS). Each proxy runs under valgrind
# with instrumentation off through the start and a 3 s warm-up, on for a 6 s
# run (16 connections), then off again.
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
test=${4:-plain}
case $test in plain) tag=plain ;; tls_h1|tls_h2) tag=tls ;; *) echo "unknown test $test" >&2; exit 2 ;; esac
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
  [ -f "$f" ] || { echo "missing $f: run loadtest/run.sh --hosts $n first" >&2; exit 2; }
done
certs="$here/out/cache/certs"

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

# One table per run: a row per proxy, host count and test (plain rows are
# named after the proxy, TLS ones PROXY-tls_h1/-tls_h2); a rerun replaces its rows.
out="$run/instructions.tsv"
row_name() { if [ "$test" = plain ]; then echo "$1"; else echo "$1-$test"; fi; }
{
  printf "proxy\thosts\trequests\tinstructions\tinstructions_per_req\n"
  if [ -f "$out" ]; then
    names=" $(for p in $proxies; do row_name "$p"; done | tr '\n' ' ')"
    awk -F'\t' -v n="$n" -v names="$names" 'NR > 1 && !($2 == n && index(names, " " $1 " "))' "$out"
  fi
} > "$work/table"
cp "$work/table" "$out"
# The load: wrk over plain HTTP, or h2load processes over TLS.
load() {
  local secs=$1 log=$2
  if [ "$test" = plain ]; then
    wrk -t1 -c16 -d"${secs}s" -s "$run/hosts-$n.lua" "http://127.0.0.1:$port/" > "$log"
    return
  fi
  local h1=() pids=()
  [ "$test" = tls_h1 ] && h1=(--h1)
  for i in 1 2 3 4; do
    h2load "${h1[@]}" -t1 -c4 -m1 -D"$secs" "--connect-to=127.0.0.1:$tls_port" \
      "https://h$(( (i * n) / 4 )).bench.example.com/" > "$log.$i" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  cat "$log".? > "$log"
}
requests_of() {
  if [ "$test" = plain ]; then
    grep -oE '^ *[0-9]+ requests' "$1" | awk '{print $1}'
  else
    grep -oE 'requests: [0-9]+ total, [0-9]+ started, [0-9]+ done, [0-9]+ succeeded' "$1" |
      awk '{s += $8} END {print s + 0}'
  fi
}
for proxy in $proxies; do
  if [ "$test" != plain ] && [ "$proxy" = bare ]; then continue; fi
  cg="$work/$proxy.cg"
  vg=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$cg")
  case $proxy in
    vestibule|vestibule-canonical)
      rm -rf "$work/manifests"
      cp -r "$run/vestibule-$n-$tag/manifests" "$work/manifests"
      default=()
      [ "$tag" = tls ] && default=(--default-cert "$certs/default.pem" --default-key "$certs/default.pem")
      # -canonical: HTTP/1 header names as HTTP/2 spells them (one map per head).
      [ "$proxy" = vestibule-canonical ] && default+=(--header-case canonical)
      RUST_LOG=warn "${vg[@]}" "$gateway" --manifests "$work/manifests" --http "127.0.0.1:$port" \
        --https "127.0.0.1:$tls_port" --admin "127.0.0.1:$admin_port" --threads 1 --no-access-log \
        "${default[@]}" > "$work/$proxy.log" 2>&1 &
      ;;
    bare)
      "${vg[@]}" "$bare" "127.0.0.1:$port" "127.0.0.1:$up_port" > "$work/$proxy.log" 2>&1 &
      ;;
    nginx)
      # One process (no master), so callgrind follows the worker.
      listen=$port
      [ "$tag" = tls ] && listen=$tls_port
      sed -E "s/listen 127.0.0.1:[0-9]+/listen 127.0.0.1:$listen/; s#^pid .*#pid $work/ng.pid;#; s/^daemon off;/daemon off;\nmaster_process off;/" \
        "$run/nginx-$n-$tag/nginx.conf" > "$work/ng.conf"
      "${vg[@]}" nginx -c "$work/ng.conf" -e "$work/ng.err" > "$work/$proxy.log" 2>&1 &
      ;;
    *) echo "unknown proxy $proxy" >&2; exit 2 ;;
  esac
  pid=$!
  ok=
  for _ in $(seq 1 240); do
    if [ "$tag" = tls ]; then
      curl -s -o /dev/null -m 2 --cacert "$certs/ca.pem" \
        --resolve "h$n.bench.example.com:$tls_port:127.0.0.1" "https://h$n.bench.example.com:$tls_port/" && { ok=1; break; }
    else
      curl -s -o /dev/null -m 2 -H "Host: h$n.bench.example.com" "http://127.0.0.1:$port/" && { ok=1; break; }
    fi
    sleep 0.5
  done
  [ -n "$ok" ] || { echo "$proxy did not start under valgrind; log:" >&2; cat "$work/$proxy.log" >&2; exit 1; }
  load 3 "$work/$proxy.warm"
  callgrind_control -i on "$pid" > /dev/null 2>&1
  load 6 "$work/$proxy.load"
  callgrind_control -i off "$pid" > /dev/null 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  sleep 1
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=
  requests=$(requests_of "$work/$proxy.load")
  bad=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' "$work/$proxy.load" | grep -oE '[0-9]+$' || true)
  [ "$test" = plain ] || bad=$(grep -oE 'status codes: [0-9]+ 2xx, [0-9]+ 3xx, [0-9]+ 4xx, [0-9]+ 5xx' "$work/$proxy.load" |
    awk '{s += $7 + $9} END {if (s > 0) print s}')
  [ -z "$bad" ] || { echo "$proxy answered $bad requests with an error status; not counted" >&2; exit 1; }
  [ "${requests:-0}" -gt 0 ] || { echo "$proxy: no request completed" >&2; cat "$work/$proxy.load" >&2; exit 1; }
  dump=$(ls -t "$cg".* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",", "", $1); t = $1} END {print t}')
  per=$((total / requests))
  name=$(row_name "$proxy")
  printf "%s\t%s\t%s\t%s\t%s\n" "$name" "$n" "$requests" "$total" "$per" >> "$out"
  cp "$dump" "$run/callgrind-$name-$n.out"
  printf "%-18s %8d requests  %9d instructions/request\n" "$name" "$requests" "$per"
  rm -rf "$work/manifests"
done
echo "wrote $out"
