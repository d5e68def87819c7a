#!/usr/bin/env python3
"""Side-by-side load test: Vestibule, nginx and HAProxy with the same N hosts
routed to the same upstream, one worker each, on 127.0.0.1.

For each proxy and host count: cold start (exec -> the last host answers 200),
idle RSS, plain HTTP/1.1 keep-alive RPS and latency with wrk (Host spread over
all N hosts), CPU time per request and loaded RSS. Everything started is
stopped by PID; every run has a duration and a timeout.
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host(i):
    return f"h{i}.bench.example.com"


# --- config generators -----------------------------------------------------


def gen_vestibule(d, n, up_port):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "base.yaml", "w") as f:
        f.write(
            f"""apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: vestibule
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {{controller: vestibule.dev/ingress-controller}}
---
apiVersion: v1
kind: Service
metadata: {{name: up, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: up-1, namespace: bench, labels: {{kubernetes.io/service-name: up}}}}
addressType: IPv4
ports: [{{name: http, port: {up_port}}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
"""
        )
    with open(d / "ingresses.yaml", "w") as f:
        for i in range(1, n + 1):
            f.write(
                f"""---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: site-{i}, namespace: bench}}
spec:
  rules:
  - host: {host(i)}
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: up, port: {{name: http}}}}}}}}]
"""
            )


def gen_nginx(d, n, port, up_port):
    d.mkdir(parents=True, exist_ok=True)
    servers = "".join(
        f"  server {{ listen 127.0.0.1:{port}; server_name {host(i)}; location / {{ proxy_pass http://up; }} }}\n"
        for i in range(1, n + 1)
    )
    (d / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  server_names_hash_max_size {max(1024, n * 4)};
  server_names_hash_bucket_size 128;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 128; }}
  server {{ listen 127.0.0.1:{port} default_server; return 404; }}
{servers}}}
"""
    )
    return ["nginx", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]


def gen_haproxy(d, n, port, up_port):
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.map").write_text("".join(f"{host(i)} up\n" for i in range(1, n + 1)))
    (d / "haproxy.cfg").write_text(
        f"""global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{port}
  use_backend %[req.hdr(host),lower,field(1,:),map({d}/hosts.map,notfound)]
backend up
  http-reuse always
  server s1 127.0.0.1:{up_port}
backend notfound
  http-request return status 404
"""
    )
    return ["haproxy", "-f", str(d / "haproxy.cfg")]


def gen_upstream(d, port):
    """A fast upstream shared by every proxy: nginx answering 200 itself."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "nginx.conf").write_text(
        f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""
    )
    return ["nginx", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]


def gen_wrk_script(path, n):
    path.write_text(
        f"""-- Spread requests over all {n} hosts; requests are prebuilt so wrk's own
-- cost is the same for every proxy.
local reqs = {{}}
local n = {n}
local i = 0
init = function(args)
  for k = 1, n do
    reqs[k] = wrk.format("GET", "/", {{ Host = "h" .. k .. ".bench.example.com" }})
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
"""
    )


# --- process handling --------------------------------------------------------


def tree_pids(root):
    """The process and its descendants (nginx master + worker)."""
    children = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(p.name))
        except (OSError, IndexError):
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK_TCK


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total / (1024 * 1024)


class Proc:
    def __init__(self, name, cmd, log, cpu=None, env=None):
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd
        self.name = name
        self.started = time.monotonic()
        self.p = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def pids(self):
        return tree_pids(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.p.wait(timeout=5)


def get_status(port, hostname, timeout=1.0):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": hostname})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_serving(proc, port, hostname, deadline_s=120):
    """Seconds from exec until `hostname` answers 200, or None."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.p.poll() is not None:
            return None
        if get_status(port, hostname, timeout=0.5) == 200:
            return time.monotonic() - proc.started
        time.sleep(0.005)
    return None


def run_wrk(port, script, duration, conns, cpu):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(script),
           f"http://127.0.0.1:{port}/"]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"requests": 0, "rps": 0.0, "errors": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pat in [r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"]:
        m = re.search(pat, out)
        if m:
            res["errors"] += sum(int(g) for g in m.groups())
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for pct in ["50", "99"]:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}_ms"] = float(m.group(1)) * unit[m.group(2)] if m else float("nan")
    return res, out


# --- main --------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gateway", required=True, help="vestibule-gateway binary")
    ap.add_argument("--hosts", type=int, action="append", help="host counts (default 1000)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="3 s runs")
    ap.add_argument("--proxies", default="vestibule,nginx,haproxy")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    counts = args.hosts or [1000]
    duration = 3 if args.quick else args.duration
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    ncpu = os.cpu_count() or 1
    # Proxy on the last core; load generator and upstream on the others.
    proxy_cpu = ncpu - 1 if ncpu > 1 else None
    load_cpu = 0 if ncpu > 1 else None

    rows = []
    up_port = free_port()
    upstream = Proc("upstream", gen_upstream(out / "upstream", up_port), open(out / "upstream.log", "w"), cpu=load_cpu)
    try:
        if wait_serving(upstream, up_port, "x", 10) is None:
            sys.exit("upstream nginx did not start (see upstream.log)")
        for n in counts:
            gen_wrk_script(out / f"hosts-{n}.lua", n)
            for name in args.proxies.split(","):
                port = free_port()
                d = out / f"{name}-{n}"
                env = None
                if name == "vestibule":
                    gen_vestibule(d / "manifests", n, up_port)
                    admin = free_port()
                    cmd = [args.gateway, "--manifests", str(d / "manifests"), "--http", f"127.0.0.1:{port}",
                           "--https", f"127.0.0.1:{free_port()}", "--admin", f"127.0.0.1:{admin}", "--threads", "1"]
                    # Access logs off for every proxy (nginx: access_log off).
                    env = dict(os.environ, RUST_LOG="warn")
                elif name == "nginx":
                    cmd = gen_nginx(d, n, port, up_port)
                elif name == "haproxy":
                    cmd = gen_haproxy(d, n, port, up_port)
                else:
                    sys.exit(f"unknown proxy {name}")
                log = open(out / f"{name}-{n}.log", "w")
                proc = Proc(name, cmd, log, cpu=proxy_cpu, env=env)
                try:
                    cold = wait_serving(proc, port, host(n))
                    if cold is None:
                        print(f"{name} n={n}: did not start, see {log.name}", file=sys.stderr)
                        continue
                    time.sleep(0.5)
                    idle = rss_mb(proc.pids())
                    # Warm up connections and caches, then measure.
                    run_wrk(port, out / f"hosts-{n}.lua", 1, args.connections, load_cpu)
                    cpu0 = cpu_seconds(proc.pids())
                    res, raw = run_wrk(port, out / f"hosts-{n}.lua", duration, args.connections, load_cpu)
                    cpu1 = cpu_seconds(proc.pids())
                    loaded = rss_mb(proc.pids())
                    (out / f"{name}-{n}.wrk.txt").write_text(raw)
                    row = {
                        "proxy": name, "hosts": n, "rps": round(res["rps"]),
                        "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"], "errors": res["errors"],
                        "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / max(res["requests"], 1), 2),
                        "idle_rss_mb": round(idle, 1), "loaded_rss_mb": round(loaded, 1),
                        "cold_start_s": round(cold, 3),
                    }
                    rows.append(row)
                    print("\t".join(f"{k}={v}" for k, v in row.items()), flush=True)
                finally:
                    proc.stop()
    finally:
        upstream.stop()

    cols = ["proxy", "hosts", "rps", "p50_ms", "p99_ms", "errors", "cpu_us_per_req",
            "idle_rss_mb", "loaded_rss_mb", "cold_start_s"]
    with open(out / "results.tsv", "w") as f:
        f.write("\t".join(cols) + "\n")
        for r in rows:
            f.write("\t".join(str(r[c]) for c in cols) + "\n")
    write_report(out, rows, cols, ncpu, duration, args.connections)
    print(f"results: {out}/results.tsv and {out}/report.md")


def write_report(out, rows, cols, ncpu, duration, conns):
    lines = [
        "# Vestibule vs nginx vs HAProxy",
        "",
        f"Machine: {ncpu} cores ({os.uname().machine}), loopback. One worker per proxy pinned to one core; "
        f"wrk (1 thread, {conns} connections, {duration} s, Host spread over all hosts) and the upstream on the other.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    lines += ["", "## Ratios (Vestibule / other, same run)", "",
              "| hosts | vs | RPS | p99 | CPU/req | loaded RSS | cold start |", "|---|---|---|---|---|---|---|"]
    by = {(r["proxy"], r["hosts"]): r for r in rows}
    for n in sorted({r["hosts"] for r in rows}):
        v = by.get(("vestibule", n))
        for other in ["nginx", "haproxy"]:
            o = by.get((other, n))
            if not v or not o:
                continue
            ratio = lambda k: f"{v[k] / o[k]:.2f}" if o[k] else "n/a"
            lines.append(f"| {n} | {other} | {ratio('rps')} | {ratio('p99_ms')} | {ratio('cpu_us_per_req')} | "
                         f"{ratio('loaded_rss_mb')} | {ratio('cold_start_s')} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
