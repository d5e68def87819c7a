#!/usr/bin/env python3
"""Side-by-side load test: Vestibule, nginx and HAProxy with the same N hosts
(and the same N certificates) routed to the same upstream, one worker each,
on 127.0.0.1.

Per proxy and host count, two configurations are started one after the other:

* plain (no certificates): cold start (exec -> the last host answers 200),
  idle RSS, HTTP/1.1 keep-alive RPS and latency with wrk (Host spread over all
  N hosts), CPU time per request, loaded RSS, then the config-change test (one
  new host per second under wrk load: failed requests, time to live per host).
* tls (one certificate per host): cold start (exec -> the last host served
  over TLS), idle RSS, keep-alive RPS over TLS with h2load (HTTP/1.1 and h2,
  several h2load processes with different SNI hosts), the full-handshake rate
  (one request per new connection, SNI rotating over all N hosts), CPU per
  request / handshake, loaded RSS.

Everything started is stopped by PID; every run has a duration and a timeout.
Results: results.tsv (one row per proxy, host count and test), then report.py
writes report.md and the PNG plots.
"""

import argparse
import datetime
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

COLS = ["proxy", "hosts", "test", "requests", "rps", "p50_ms", "p99_ms", "p999_ms", "errors",
        "cpu_us_per_req", "idle_rss_mb", "loaded_rss_mb", "idle_pss_mb", "cold_start_s",
        "changes", "ttl_p50_ms", "ttl_max_ms", "note"]


# Idle memory is read this long after the last host serves, the same for
# every proxy: steady state, after allocators return what the load freed
# (mimalloc purges freed pages after a 1 s delay).
SETTLE_S = 2.5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host(i):
    return f"h{i}.bench.example.com"


def make_pools(count, port):
    """The upstream layout: one pool of one endpoint (`--pools 1`), or
    `count` pools of 2, 3 and 4 endpoints in turn, as Services in a real
    cluster have. Endpoints are loopback addresses (127.0.K.J) on one port,
    all answered by the upstream nginx: each is its own connection pool for
    every proxy. Returns [(pool name, [(address, port)])]."""
    if count <= 1:
        return [("up", [("127.0.0.1", port)])]
    return [(f"up-{k}", [(f"127.0.{k + 1}.{j + 1}", port) for j in range(2 + k % 3)]) for k in range(count)]


def pool_of(pools, i):
    """Host i's pool: hosts spread round the pools."""
    return pools[i % len(pools)][0]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- certificates --------------------------------------------------------------
# One CA, one ECDSA P-256 leaf per host, cached under out/cache/certs (h<i>.pem
# holds the leaf certificate followed by its PKCS#8 key; every proxy reads the
# same files). Generation runs on all cores and only makes the missing ones.

_CA = None


def _cert_worker_init(ca_cert_pem, ca_key_pem):
    global _CA
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    _CA = (x509.load_pem_x509_certificate(ca_cert_pem),
           serialization.load_pem_private_key(ca_key_pem, None))


def _make_leaf(name, ca_cert, ca_key):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def _cert_job(args):
    d, lo, hi = args
    for i in range(lo, hi):
        p = Path(d) / f"h{i}.pem"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(_make_leaf(host(i), *_CA))
            tmp.rename(p)
    return hi - lo


def ensure_certs(cache, n):
    """CA + default + h1..hN certificates; returns the cache directory."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    d = cache / "certs"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "ca.key").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vestibule bench CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(key, hashes.SHA256()))
        (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (d / "ca.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_pem, ca_key = (d / "ca.pem").read_bytes(), (d / "ca.key").read_bytes()
    _cert_worker_init(ca_pem, ca_key)
    if not (d / "default.pem").exists():
        (d / "default.pem").write_bytes(_make_leaf("default.bench.example.com", *_CA))
    missing = [i for i in range(1, n + 1) if not (d / f"h{i}.pem").exists()]
    if missing:
        t0 = time.monotonic()
        step = 500
        jobs = [(str(d), lo, min(lo + step, n + 1)) for lo in range(min(missing), n + 1, step)]
        with multiprocessing.Pool(os.cpu_count() or 1, _cert_worker_init, (ca_pem, ca_key)) as pool:
            pool.map(_cert_job, jobs)
        log(f"generated {len(missing)} certificates in {time.monotonic() - t0:.1f} s")
    return d


def split_pem(data):
    text = data.decode()
    i = text.index("-----BEGIN PRIVATE KEY-----")
    return text[:i], text[i:]


# --- config generators -----------------------------------------------------


def vestibule_ingress(i, tls, pool="up"):
    spec_tls = f"\n  tls: [{{hosts: [{host(i)}], secretName: cert-{i}}}]" if tls else ""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: site-{i}, namespace: bench}}
spec:{spec_tls}
  rules:
  - host: {host(i)}
    http:
      paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {pool}, port: {{name: http}}}}}}}}]
"""


# A limit no run reaches: the limiter is checked on every request, never refuses.
TENANT_LIMIT = """---
apiVersion: vestibule.dev/v1alpha1
kind: Tenant
metadata: {name: bench}
spec:
  domains: ["*.bench.example.com"]
  namespaces: [bench]
  rateLimit: {requestsPerSecond: 10000000, burst: 1000000}
"""


FILE_OBJECTS = 10_000


def gen_vestibule(d, n, pools, certs=None, limited=False):
    d.mkdir(parents=True, exist_ok=True)
    if limited:
        (d / "tenant.yaml").write_text(TENANT_LIMIT)
    services = "".join(f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: http, port: {eps[0][1]}}}]
endpoints: [{", ".join(f"{{addresses: [{a}], conditions: {{ready: true}}}}" for a, _ in eps)}]
""" for name, eps in pools)
    (d / "base.yaml").write_text(f"""apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: vestibule
  annotations: {{ingressclass.kubernetes.io/is-default-class: "true"}}
spec: {{controller: vestibule.dev/ingress-controller}}
{services}""")
    # Files of 10,000 objects: under the gateway's per-file limit (64 MiB)
    # at any host count, and parsed in parallel.
    for lo in range(1, n + 1, FILE_OBJECTS):
        with open(d / f"ingresses-{lo // FILE_OBJECTS:03}.yaml", "w") as f:
            for i in range(lo, min(lo + FILE_OBJECTS, n + 1)):
                f.write(vestibule_ingress(i, certs is not None, pool_of(pools, i)))
    if certs is not None:
        ind = lambda s: "".join("      " + line + "\n" for line in s.strip().splitlines())
        for lo in range(1, n + 1, FILE_OBJECTS):
            with open(d / f"secrets-{lo // FILE_OBJECTS:03}.yaml", "w") as f:
                for i in range(lo, min(lo + FILE_OBJECTS, n + 1)):
                    crt, key = split_pem((certs / f"h{i}.pem").read_bytes())
                    f.write(f"""---
apiVersion: v1
kind: Secret
metadata: {{name: cert-{i}, namespace: bench}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{ind(crt)}  tls.key: |
{ind(key)}""")


def vestibule_cmd(gateway, d, port, tport, admin, certs, access_log=False):
    cmd = [gateway, "--manifests", str(d / "manifests"), "--http", f"127.0.0.1:{port}",
           "--https", f"127.0.0.1:{tport}", "--admin", f"127.0.0.1:{admin}", "--threads", "1"]
    if not access_log:
        cmd.append("--no-access-log")
    if certs is not None and gateway_has_flag(gateway, "--default-cert"):
        cmd += ["--default-cert", str(certs / "default.pem"), "--default-key", str(certs / "default.pem")]
    return cmd


_HELP = {}


def gateway_has_flag(gateway, flag):
    if gateway not in _HELP:
        _HELP[gateway] = subprocess.run([gateway, "--help"], capture_output=True, text=True, timeout=10).stdout
    return flag in _HELP[gateway]


def gen_nginx(d, n, port, pools, certs=None, tport=None, access_log=False):
    d.mkdir(parents=True, exist_ok=True)
    if certs is None:
        servers = "".join(
            f"  server {{ listen 127.0.0.1:{port}; server_name {host(i)}; location / {{ proxy_pass http://{pool_of(pools, i)}; }} }}\n"
            for i in range(1, n + 1))
        default = f"  server {{ listen 127.0.0.1:{port} default_server; return 404; }}\n"
    else:
        servers = "".join(
            f"  server {{ listen 127.0.0.1:{tport} ssl http2; server_name {host(i)}; "
            f"ssl_certificate {certs}/h{i}.pem; ssl_certificate_key {certs}/h{i}.pem; "
            f"location / {{ proxy_pass http://{pool_of(pools, i)}; }} }}\n"
            for i in range(1, n + 1))
        default = (f"  server {{ listen 127.0.0.1:{tport} ssl http2 default_server; "
                   f"ssl_certificate {certs}/default.pem; ssl_certificate_key {certs}/default.pem; return 404; }}\n")
    upstreams = "".join(
        f"  upstream {name} {{ {' '.join(f'server {a}:{p};' for a, p in eps)} keepalive 128; }}\n"
        for name, eps in pools)
    # Written beside and renamed in: a reload of 100k servers takes seconds
    # and must never read a half-written file.
    (d / "nginx.conf.tmp").write_text(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log {f"{d}/access.log" if access_log else "off"};
  # nginx closes a connection after 1,000 requests by default (h2 too, since
  # 1.19.7); h2load does not reconnect and the others have no such limit.
  keepalive_requests 1000000;
  server_names_hash_max_size {max(1024, n * 4)};
  server_names_hash_bucket_size 128;
  ssl_protocols TLSv1.2 TLSv1.3;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto $scheme;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
{upstreams}{default}{servers}}}
""")
    os.replace(d / "nginx.conf.tmp", d / "nginx.conf")
    return ["nginx", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]


def gen_haproxy(d, n, port, pools, certs=None, tport=None, access_log=False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.map").write_text("".join(f"{host(i)} {pool_of(pools, i)}\n" for i in range(1, n + 1)))
    backends = "".join(
        f"backend {name}\n  balance roundrobin\n  http-reuse always\n"
        + "".join(f"  server s{j} {a}:{p}\n" for j, (a, p) in enumerate(eps))
        for name, eps in pools)
    # -log: HAProxy's HTTP log format to stdout (the run's log file); it has
    # no file target, and a syslog socket would measure the syslog daemon too.
    logging = "  log stdout format raw local0\n" if access_log else ""
    httplog = "  option httplog\n  log global\n" if access_log else ""
    if certs is None:
        bind = f"bind 127.0.0.1:{port}"
    else:
        # The first line is the default certificate; the SNI filters spare
        # HAProxy reading the names out of each certificate.
        (d / "crt-list.txt").write_text(f"{certs}/default.pem\n" + "".join(
            f"{certs}/h{i}.pem {host(i)}\n" for i in range(1, n + 1)))
        bind = f"bind 127.0.0.1:{tport} ssl crt-list {d}/crt-list.txt alpn h2,http/1.1"
    (d / "haproxy.cfg").write_text(f"""global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
{logging}defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
{httplog}frontend fe
  {bind}
  use_backend %[req.hdr(host),lower,field(1,:),map({d}/hosts.map,notfound)]
{backends}backend notfound
  http-request return status 404
""")
    # Master-worker mode: the reload (USR2) of the config-change test.
    return ["haproxy", "-W", "-f", str(d / "haproxy.cfg")]


def gen_upstream(d, pools):
    """A fast upstream shared by every proxy: nginx answering 200 itself."""
    d.mkdir(parents=True, exist_ok=True)
    addrs = dict.fromkeys([("127.0.0.1", pools[0][1][0][1])] + [e for _, eps in pools for e in eps])
    listens = " ".join(f"listen {a}:{p};" for a, p in addrs)
    (d / "nginx.conf").write_text(f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{ {listens} location / {{ return 200 "ok\\n"; }} }}
}}
""")
    return ["nginx", "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")]


def gen_wrk_script(path, n):
    path.write_text(f"""-- Spread requests over all {n} hosts; requests are prebuilt so wrk's own
-- cost is the same for every proxy. done() prints exact percentiles (wrk's
-- --latency stops at 99%).
local reqs = {{}}
local n = {n}
local i = 0
init = function(args)
  for k = 1, n do
    reqs[k] = wrk.format("GET", "/", {{ Host = "h" .. k .. ".bench.example.com" }})
  end
  i = math.random(n) - 1
end
request = function()
  i = i % n + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  for _, p in ipairs({{50, 99, 99.9}}) do
    io.write(string.format("PCT %g %d\\n", p, latency:percentile(p)))
  end
end
""")


# --- process handling --------------------------------------------------------


def tree_pids(root):
    """The process and its descendants (nginx/HAProxy master + worker)."""
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
            total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
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


def pss_mb(pids):
    """Proportional set size: pages shared by master and worker counted once."""
    total = 0
    for pid in pids:
        try:
            m = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
            total += int(m.group(1)) * 1024 if m else 0
        except OSError:
            pass
    return total / (1024 * 1024)


class Proc:
    def __init__(self, name, cmd, logf, cpu=None, env=None):
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu)] + cmd  # taskset execs: same PID
        self.name = name
        self.started = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)

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
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            for pid in self.pids() + pids:  # stragglers (old workers after a reload)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.p.poll() is None:
                self.p.wait(timeout=5)


# --- probes ------------------------------------------------------------------


def http_status(port, hostname, timeout=1.0, tls_ctx=None):
    """Status of GET / with a new connection (TLS with SNI `hostname` when
    tls_ctx is given), or None on a connection/handshake error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            conn = tls_ctx.wrap_socket(s, server_hostname=hostname) if tls_ctx else s
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            while b"\r\n" not in buf:
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            return int(buf.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_serving(proc, port, hostname, deadline_s, tls_ctx=None):
    """Seconds from exec until `hostname` answers 200, or None."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.p.poll() is not None:
            return None
        if http_status(port, hostname, timeout=0.5, tls_ctx=tls_ctx) == 200:
            return time.monotonic() - proc.started
        time.sleep(0.005)
    return None


# --- load generators ---------------------------------------------------------


def pinned(cmd, cpu):
    return (["taskset", "-c", str(cpu)] + cmd) if cpu is not None and shutil.which("taskset") else cmd


def run_wrk(port, script, duration, conns, cpu):
    cmd = pinned(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", str(script),
                  f"http://127.0.0.1:{port}/"], cpu)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"requests": 0, "rps": 0.0, "errors": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pat in [r"Non-2xx or 3xx responses: (\d+)",
                r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"]:
        m = re.search(pat, out)
        if m:
            res["errors"] += sum(int(g) for g in m.groups())
    for p, us in re.findall(r"^PCT ([\d.]+) (\d+)$", out, re.M):
        res[{"50": "p50_ms", "99": "p99_ms", "99.9": "p999_ms"}[p]] = int(us) / 1000
    return res, out


def parse_h2load(out):
    r = {"done": 0, "ok": 0, "errors": 0}
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m and s:
        total, started, done, succ, failed, errored, tmo = map(int, m.groups())
        r["done"] = done
        r["ok"] = int(s.group(1))
        r["errors"] = failed + int(s.group(2)) + int(s.group(3)) + int(s.group(4))
    elif not m:
        r["errors"] = 1  # h2load could not run at all (e.g. every handshake failed)
    return r


def percentiles_ms(samples_us):
    if not samples_us:
        return {}
    samples_us.sort()
    pick = lambda q: samples_us[min(len(samples_us) - 1, int(q * len(samples_us)))] / 1000
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "p999_ms": pick(0.999)}


def sample_hosts(n, k):
    """k hosts spread evenly over 1..n."""
    return [1 + (j * n) // k for j in range(k)]


def run_h2load_keepalive(port, n, duration, conns, procs, cpu, proto, tmp):
    """`procs` h2load processes in parallel, each with its own SNI host (spread
    over all N), conns/procs connections each, for `duration` seconds: one
    TLS handshake per connection, then keep-alive requests (HTTP/1.1, or h2
    with one stream in flight per connection)."""
    per = max(1, conns // procs)
    running = []
    for j, i in enumerate(sample_hosts(n, procs)):
        logf = tmp / f"h2load-{proto}-{j}.log"
        cmd = ["h2load", "-t1", f"-c{per}", "-m1", f"-D{duration}", f"--connect-to=127.0.0.1:{port}",
               f"--log-file={logf}", f"https://{host(i)}/"]
        if proto == "h1":
            cmd.insert(1, "--h1")
        running.append((subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True), logf))
    res = {"requests": 0, "errors": 0, "rps": 0.0}
    lat, raw = [], []
    for p, logf in running:
        try:
            out, _ = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        raw.append(out)
        r = parse_h2load(out)
        res["requests"] += r["done"]
        res["errors"] += r["errors"]
        if r["done"] == 0:
            res["idle_procs"] = res.get("idle_procs", 0) + 1
        m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
        res["rps"] += float(m.group(1)) if m else 0.0
        try:
            for line in logf.read_text().splitlines():
                f = line.split("\t")
                if len(f) >= 3:
                    lat.append(int(f[2]))
            logf.unlink()
        except OSError:
            pass
    res.update(percentiles_ms(lat))
    return res, "\n".join(raw)


def run_handshakes(port, n, duration, lanes, per_round, cpu, rng):
    """Full-handshake rate: `lanes` loops, each running h2load rounds of
    `per_round` new connections with one request each (HTTP/1.1 over TLS, no
    session resumption: every h2load connection is a fresh SSL session), each
    round with the SNI of a random host out of all N, until `duration` is
    over. Returns handshakes done, errors and the wall time."""
    stop_at = time.monotonic() + duration
    tot = {"requests": 0, "errors": 0, "rounds": 0}
    lock = threading.Lock()

    def lane():
        while time.monotonic() < stop_at:
            i = rng.randint(1, n)
            cmd = ["h2load", "--h1", "-t1", f"-c{per_round}", f"-n{per_round}",
                   f"--connect-to=127.0.0.1:{port}", f"https://{host(i)}/"]
            try:
                out = subprocess.run(pinned(cmd, cpu), capture_output=True, text=True, timeout=30).stdout
            except subprocess.TimeoutExpired:
                out = ""
            r = parse_h2load(out)
            with lock:
                tot["requests"] += r["ok"]
                tot["errors"] += r["errors"] + (per_round - r["done"] if r["done"] else 0)
                tot["rounds"] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=lane) for _ in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tot["wall"] = time.monotonic() - t0
    return tot


# --- config changes ------------------------------------------------------------


class Changer:
    """Adds host N+k to a running proxy the way each one is meant to change."""

    def __init__(self, name, proc, d, n, port, pools):
        self.name, self.proc, self.d, self.n, self.port, self.pools = name, proc, d, n, port, pools

    def add(self, k):
        i = self.n + k
        if self.name == "vestibule":
            # Written beside the directory, renamed in: one complete file event.
            tmp = self.d / f"new-{k}.yaml.tmp"
            tmp.write_text(vestibule_ingress(i, False, pool_of(self.pools, i)))
            os.replace(tmp, self.d / "manifests" / f"new-{k}.yaml")
        elif self.name == "nginx":
            gen_nginx(self.d, i, self.port, self.pools)
            os.kill(self.proc.p.pid, signal.SIGHUP)  # reload: new workers, old ones drain
        elif self.name == "haproxy":
            with open(self.d / "hosts.map", "a") as f:
                f.write(f"{host(i)} {pool_of(self.pools, i)}\n")
            os.kill(self.proc.p.pid, signal.SIGUSR2)  # master-worker reload
        return host(i)


def run_changes(changer, port, script, changes, conns, cpu):
    """wrk keep-alive load over the N existing hosts for changes + 2 s; from
    1 s in, one host added per second. Each new host is probed (new
    connection every 2 ms) until it answers 200: its time to live. Failed
    requests = wrk's errors and non-2xx + probe connection errors."""
    duration = changes + 2
    result = {}
    t = threading.Thread(target=lambda: result.update(
        zip(("res", "raw"), run_wrk(port, script, duration, conns, cpu))))
    t.start()
    time.sleep(1.0)
    ttls, probe_errors, never = [], 0, 0
    t_next = time.monotonic()
    for k in range(1, changes + 1):
        t_next += 1.0
        name = changer.add(k)
        t0 = time.monotonic()
        while True:
            st = http_status(port, name, timeout=1.0)
            now = time.monotonic()
            if st == 200:
                ttls.append((now - t0) * 1000)
                break
            if st is None:
                probe_errors += 1
            if now - t0 > 5:
                never += 1
                break
            time.sleep(0.002)
        time.sleep(max(0.0, t_next - time.monotonic()))
    t.join(timeout=duration + 40)
    res = result.get("res", {"requests": 0, "errors": 0, "rps": 0})
    in_order, ttls = ttls, sorted(ttls)
    return {
        "requests": res["requests"], "rps": round(res["rps"]), "errors": res["errors"] + probe_errors + never,
        "changes": changes, "ttl_p50_ms": round(ttls[len(ttls) // 2], 1) if ttls else "",
        "ttl_max_ms": round(ttls[-1], 1) if ttls else "",
        "p50_ms": res.get("p50_ms", ""), "p99_ms": res.get("p99_ms", ""), "p999_ms": res.get("p999_ms", ""),
        "note": f"wrk errors {res['errors']}, probe errors {probe_errors}, never live {never}; "
                f"ttls {','.join(str(round(x)) for x in in_order)}",
    }, result.get("raw", "")


# --- one proxy, one host count ---------------------------------------------------


class Bench:
    def __init__(self, args, out, pools, proxy_cpu, load_cpu):
        self.a, self.out, self.pools = args, out, pools
        self.proxy_cpu, self.load_cpu = proxy_cpu, load_cpu
        self.rows = []
        self.rng = random.Random(7)
        self.redis_port = None

    def emit(self, row):
        row = {c: row.get(c, "") for c in COLS}
        self.rows.append(row)
        print("\t".join(f"{k}={v}" for k, v in row.items() if v != "" and k != "note"), flush=True)
        with open(self.out / "results.tsv", "a") as f:
            f.write("\t".join(str(row[c]) for c in COLS) + "\n")

    def start(self, name, n, certs, tag):
        """Renders the config and starts the proxy; returns (proc, plain port, tls port, dir)."""
        d = self.out / f"{name}-{n}-{tag}"
        port, tport = free_port(), free_port()
        env = None
        if name in ("vestibule", "vestibule-limited", "vestibule-redis", "vestibule-log", "vestibule-canonical"):
            # -limited: every host a rate-limited tenant's (the local limiter);
            # -redis: the same with the cluster-wide limiter on redis-server;
            # -log: the access log on (the default users keep), to a file.
            limited = name in ("vestibule-limited", "vestibule-redis")
            gen_vestibule(d / "manifests", n, self.pools, certs, limited=limited)
            logged = name == "vestibule-log"
            cmd = vestibule_cmd(self.a.gateway, d, port, tport, free_port(), certs, access_log=logged)
            if name == "vestibule-redis":
                cmd += ["--rate-limit-store", f"redis://127.0.0.1:{self.redis_port}"]
            if name == "vestibule-canonical":
                # -canonical: HTTP/1 header names as HTTP/2 spells them (one
                # header map per head instead of two; the default keeps case).
                cmd += ["--header-case", "canonical"]
            env = dict(os.environ, RUST_LOG="warn,vestibule::access=info" if logged else "warn")
        elif name in ("nginx", "nginx-log"):
            # -log: `access_log` to a file, nginx's default format.
            cmd = gen_nginx(d, n, port, self.pools, certs, tport, access_log=name == "nginx-log")
        elif name in ("haproxy", "haproxy-log"):
            # -log: HAProxy's HTTP log line per request, to the run's log file.
            cmd = gen_haproxy(d, n, port, self.pools, certs, tport, access_log=name == "haproxy-log")
        elif name == "bare":
            # The floor: the thinnest Pingora proxy (any Host -> the first
            # endpoint of the first pool).
            a_, p_ = self.pools[0][1][0]
            cmd = [self.a.bare, f"127.0.0.1:{port}", f"{a_}:{p_}"]
        else:
            sys.exit(f"unknown proxy {name}")
        logf = open(self.out / f"{name}-{n}-{tag}.log", "w")
        return Proc(name, cmd, logf, cpu=self.proxy_cpu, env=env), port, tport, d

    def plain(self, name, n):
        a, out = self.a, self.out
        script = out / f"hosts-{n}.lua"
        proc, port, _, d = self.start(name, n, None, "plain")
        try:
            cold = wait_serving(proc, port, host(n), a.start_timeout)
            if cold is None:
                self.emit({"proxy": name, "hosts": n, "test": "http", "note": "did not start"})
                return
            time.sleep(SETTLE_S)
            idle, idle_pss = rss_mb(proc.pids()), pss_mb(proc.pids())
            run_wrk(port, script, 1, a.connections, self.load_cpu)  # warm-up
            cpu0 = cpu_seconds(proc.pids())
            res, raw = run_wrk(port, script, a.duration, a.connections, self.load_cpu)
            cpu1 = cpu_seconds(proc.pids())
            (out / f"{name}-{n}-http.wrk.txt").write_text(raw)
            self.emit({"proxy": name, "hosts": n, "test": "http", "requests": res["requests"],
                       "rps": round(res["rps"]), "p50_ms": res.get("p50_ms"), "p99_ms": res.get("p99_ms"),
                       "p999_ms": res.get("p999_ms"), "errors": res["errors"],
                       "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / max(res["requests"], 1), 2),
                       "idle_rss_mb": round(idle, 1), "loaded_rss_mb": round(rss_mb(proc.pids()), 1),
                       "idle_pss_mb": round(idle_pss, 1), "cold_start_s": round(cold, 3)})
            if a.changes > 0 and name in ("vestibule", "nginx", "haproxy"):
                r, raw = run_changes(Changer(name, proc, d, n, port, self.pools), port, script,
                                     a.changes, a.connections, self.load_cpu)
                (out / f"{name}-{n}-change.wrk.txt").write_text(raw)
                self.emit(dict(r, proxy=name, hosts=n, test="change"))
        finally:
            proc.stop()

    def tls(self, name, n, certs):
        a, out = self.a, self.out
        proc, _, tport, d = self.start(name, n, certs, "tls")
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        try:
            cold = wait_serving(proc, tport, host(n), a.start_timeout, tls_ctx=ctx)
            if cold is None:
                why = "exited" if proc.p.poll() is not None else f"no TLS 200 from {host(n)} in {a.start_timeout} s"
                self.emit({"proxy": name, "hosts": n, "test": "tls_h1", "note": f"TLS not serving ({why})"})
                return
            time.sleep(SETTLE_S)
            idle, idle_pss = rss_mb(proc.pids()), pss_mb(proc.pids())
            base = {"proxy": name, "hosts": n, "idle_rss_mb": round(idle, 1), "idle_pss_mb": round(idle_pss, 1),
                    "cold_start_s": round(cold, 3)}
            run_h2load_keepalive(tport, n, 1, a.connections, a.h2load_procs, self.load_cpu, "h1", out)  # warm-up
            for proto in ["h1", "h2"]:
                cpu0 = cpu_seconds(proc.pids())
                res, raw = run_h2load_keepalive(tport, n, a.duration, a.connections, a.h2load_procs,
                                                self.load_cpu, proto, out)
                cpu1 = cpu_seconds(proc.pids())
                (out / f"{name}-{n}-tls_{proto}.h2load.txt").write_text(raw)
                note = (f"{res['idle_procs']} of {a.h2load_procs} h2load processes completed no request"
                        if res.get("idle_procs") else "")
                self.emit(dict(base, test=f"tls_{proto}", requests=res["requests"], rps=round(res["rps"]), note=note,
                               p50_ms=res.get("p50_ms"), p99_ms=res.get("p99_ms"), p999_ms=res.get("p999_ms"),
                               errors=res["errors"],
                               cpu_us_per_req=round((cpu1 - cpu0) * 1e6 / max(res["requests"], 1), 2),
                               loaded_rss_mb=round(rss_mb(proc.pids()), 1)))
                base = {"proxy": name, "hosts": n}
            cpu0 = cpu_seconds(proc.pids())
            hs = run_handshakes(tport, n, a.duration, a.handshake_lanes, a.handshake_round, self.load_cpu, self.rng)
            cpu1 = cpu_seconds(proc.pids())
            self.emit({"proxy": name, "hosts": n, "test": "handshake", "requests": hs["requests"],
                       "rps": round(hs["requests"] / hs["wall"]), "errors": hs["errors"],
                       "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / max(hs["requests"], 1), 2),
                       "loaded_rss_mb": round(rss_mb(proc.pids()), 1),
                       "note": f"{hs['rounds']} h2load rounds of {a.handshake_round} new connections"})
        finally:
            proc.stop()


# --- main --------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True, help="vestibule-gateway binary")
    ap.add_argument("--hosts", type=int, action="append", help="host counts (repeatable; default 1000)")
    ap.add_argument("--duration", type=int, help="seconds per load run (default 10, --quick 3)")
    ap.add_argument("--changes", type=int, help="config changes under load, one per second "
                    "(default 19, i.e. 20 s of load; --quick 9)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--h2load-procs", type=int, default=8, help="h2load processes (SNI hosts) per TLS run")
    ap.add_argument("--handshake-lanes", type=int, default=4)
    ap.add_argument("--handshake-round", type=int, default=32, help="new connections per h2load round")
    ap.add_argument("--start-timeout", type=int, help="seconds a proxy may take to serve the last host")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 9 changes")
    ap.add_argument("--proxies", default="vestibule,nginx,haproxy",
                    help="comma list of vestibule, nginx, haproxy and bare (bare Pingora, plain test only; "
                    "needs --bare)")
    ap.add_argument("--bare", help="the bare_proxy example binary (default: beside --gateway)")
    ap.add_argument("--tests", default="plain,tls", help="plain,tls or one of them")
    ap.add_argument("--pools", type=int, default=1,
                    help="upstream pools: 1 (one endpoint, the default) or N pools of 2-4 endpoints each, "
                    "hosts spread round them (the multi-pool layout: --pools 12)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    counts = args.hosts or [1000]
    args.duration = args.duration or (3 if args.quick else 10)
    args.changes = args.changes if args.changes is not None else (9 if args.quick else 19)
    args.start_timeout = args.start_timeout or max(30, max(counts) // 500)
    tests = args.tests.split(",")
    if not args.bare:
        args.bare = str(Path(args.gateway).parent / "examples" / "bare_proxy")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    cache = HERE / "out" / "cache"
    ncpu = os.cpu_count() or 1
    # Proxy on the last core; load generators, upstream and this script on core 0.
    proxy_cpu = ncpu - 1 if ncpu > 1 else None
    load_cpu = 0 if ncpu > 1 else None

    (out / "results.tsv").write_text("\t".join(COLS) + "\n")
    meta = {"date": stamp, "cores": ncpu, "machine": os.uname().machine, "kernel": os.uname().release,
            "duration_s": args.duration, "changes": args.changes, "connections": args.connections,
            "h2load_procs": args.h2load_procs, "handshake_lanes": args.handshake_lanes,
            "handshake_round": args.handshake_round, "hosts": counts, "quick": args.quick,
            "pools": [len(eps) for _, eps in make_pools(args.pools, 0)],
            "loadavg_before": Path("/proc/loadavg").read_text().strip(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                               if l.startswith("model name")), "?"),
            "versions": {
                "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip(),
                "haproxy": subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
                "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
                "h2load": subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.split("\n")[0],
                "vestibule": subprocess.run([args.gateway, "--version"], capture_output=True, text=True).stdout.split("\n")[0],
            }}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    upstream = None
    extra_procs = []
    try:
        up_port = free_port()
        pools = make_pools(args.pools, up_port)
        upstream = Proc("upstream", gen_upstream(out / "upstream", pools), open(out / "upstream.log", "w"),
                        cpu=load_cpu)
        if wait_serving(upstream, up_port, "x", 10) is None:
            sys.exit("upstream nginx did not start (see upstream.log)")
        if load_cpu is not None:
            os.sched_setaffinity(0, {load_cpu})  # after the cert pool could use every core
        bench = Bench(args, out, pools, proxy_cpu, load_cpu)
        if "vestibule-redis" in args.proxies.split(","):
            bench.redis_port = free_port()
            redis = Proc("redis", ["redis-server", "--port", str(bench.redis_port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"], open(out / "redis.log", "w"), cpu=load_cpu)
            extra_procs.append(redis)
        for n in counts:
            gen_wrk_script(out / f"hosts-{n}.lua", n)
            certs = None
            if "tls" in tests:
                os.sched_setaffinity(0, set(range(ncpu)))
                certs = ensure_certs(cache, n)
                if load_cpu is not None:
                    os.sched_setaffinity(0, {load_cpu})
            for name in args.proxies.split(","):
                if "plain" in tests:
                    log(f"{name} n={n} plain")
                    bench.plain(name, n)
                if "tls" in tests and name.removesuffix("-log") in ("vestibule", "nginx", "haproxy", "vestibule-canonical"):
                    log(f"{name} n={n} tls")
                    bench.tls(name, n, certs)
    finally:
        if upstream:
            upstream.stop()
        for p in extra_procs:
            p.stop()
    subprocess.run([sys.executable, str(HERE / "report.py"), str(out)], check=False, timeout=300)
    print(f"results: {out}/results.tsv, {out}/report.md, {out}/*.png")


if __name__ == "__main__":
    main()
