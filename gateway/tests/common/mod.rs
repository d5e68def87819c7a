//! Test harness: real upstream HTTP servers that say who they are, a tiny
//! HTTP/1.1 client, and the gateway binary run as a child process (Pingora's
//! server owns signals and never returns, so it can't run in-process).
#![allow(dead_code, clippy::unwrap_used)]

pub mod nginx;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use vestibule_config::model::{
    Endpoint, GatewayConfig, PathMatch, Pool, PoolId, Route, RouteName, TenantId, VirtualHost,
};
use vestibule_config::HostPattern;

// === upstreams ===

/// An HTTP/1.1 upstream answering `200` with body `NAME\n` followed by the
/// request headers it received (`name: value` lines, lower-case names).
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Connections that carried at least one request (not the health
    /// checks' bare connects).
    served: Arc<AtomicUsize>,
    /// The method and target of every request received, in order.
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0").await
    }

    pub async fn start_on(name: &str, bind: &str) -> Upstream {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let n = name.to_string();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                tokio::select! {
                    conn = listener.accept() => {
                        let Ok((sock, _)) = conn else { continue };
                        tokio::spawn(serve_conn(sock, n.clone(), stopped.clone(), count.clone(), log.clone()));
                    }
                    _ = stopped_accept.changed() => return,
                }
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            stop,
            served,
            requests,
        }
    }

    /// `METHOD target` of every request received so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Connections that have carried a request so far.
    pub fn connections(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    /// Closes the listener and every open connection, like a crashed process.
    pub fn kill(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve_conn(
    sock: TcpStream,
    name: String,
    mut stopped: watch::Receiver<bool>,
    served: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut first = true;
    let mut reader = BufReader::new(sock);
    loop {
        let head = tokio::select! {
            h = read_head(&mut reader) => h,
            _ = stopped.changed() => return,
        };
        let Some((line, headers)) = head else { return };
        // The request target as forwarded, for tests of path handling.
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let method = line.split(' ').next().unwrap_or("");
        requests.lock().unwrap().push(format!("{method} {target}"));
        if std::mem::take(&mut first) {
            served.fetch_add(1, Ordering::Relaxed);
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        // `?delay=1s` / `?delay=250ms` answers late (as the Gateway API
        // conformance suite's echo backend does).
        if let Some(d) = target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("delay=")))
        {
            let ms = match d.strip_suffix("ms") {
                Some(ms) => ms.parse().unwrap_or(0),
                None => {
                    d.strip_suffix('s')
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                        * 1000
                }
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut out = format!("{name}\n");
        for (k, v) in &headers {
            out.push_str(&format!("{k}: {v}\n"));
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\nx-target: {target}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{out}",
            out.len()
        );
        if *stopped.borrow() {
            return;
        }
        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads a request or status line and headers; header names lower-cased.
/// Repeated headers are joined with ", ".
async fn read_head<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
) -> Option<(String, BTreeMap<String, String>)> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let first = line.trim_end().to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers
            .entry(k.trim().to_ascii_lowercase())
            .and_modify(|old: &mut String| {
                old.push_str(", ");
                old.push_str(v.trim());
            })
            .or_insert_with(|| v.trim().to_string());
    }
    Some((first, headers))
}

/// Service `app` in namespace `saas` over one upstream, with its
/// EndpointSlice: the backend of the manifests-mode tests.
pub fn app_manifests(up: &Upstream) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: app, namespace: saas}}
spec: {{ports: [{{name: web, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: app-1, namespace: saas, labels: {{kubernetes.io/service-name: app}}}}
addressType: IPv4
ports: [{{name: web, port: {port}}}]
endpoints:
  - addresses: [{ip}]
"#,
        port = up.addr.port(),
        ip = up.addr.ip(),
    )
}

// === client ===

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Response {
    /// The upstream that answered (first body line), if one did.
    pub fn upstream(&self) -> Option<&str> {
        self.headers.get("x-upstream").map(String::as_str)
    }

    /// The request headers the upstream saw.
    pub fn seen(&self) -> BTreeMap<String, String> {
        self.body
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A keepalive HTTP/1.1 client that reconnects when the server closes.
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client { addr, conn: None }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Response, String> {
        self.request("GET", host, path, &[]).await
    }

    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        // One retry on a fresh connection if the kept-alive one was closed.
        let reused = self.conn.is_some();
        match self.try_request(&req).await {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.conn = None;
                self.try_request(&req).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_request(&mut self, req: &str) -> Result<Response, String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| e.to_string())?;
            s.set_nodelay(true).ok();
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), async {
            conn.get_mut()
                .write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_response(conn).await
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        match &res {
            Ok(r) if r.headers.get("connection").map(String::as_str) != Some("close") => {}
            _ => self.conn = None,
        }
        res
    }
}

/// Writes raw request bytes to `stream`, reads one response (within 5 s).
pub async fn exchange<S: tokio::io::AsyncRead + AsyncWriteExt + Unpin>(
    stream: S,
    bytes: &[u8],
) -> Response {
    let mut conn = BufReader::new(stream);
    conn.get_mut().write_all(bytes).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_response(&mut conn))
        .await
        .expect("response in time")
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(bytes)))
}

/// Reads one HTTP/1.1 response (content-length or chunked) from any stream.
pub async fn read_response<R: AsyncBufReadExt + AsyncReadExt + Unpin>(
    conn: &mut R,
) -> Result<Response, String> {
    let (line, headers) = read_head(conn).await.ok_or("connection closed")?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).await.map_err(|e| e.to_string())?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = headers.get("content-length") {
        let n: usize = len.parse().map_err(|_| "bad content-length")?;
        body = vec![0; n];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

// === config building ===

pub fn pool(upstreams: &[(&Upstream, u32)]) -> Pool {
    let mut eps: Vec<Endpoint> = upstreams
        .iter()
        .map(|(u, w)| Endpoint {
            address: u.addr,
            weight: *w,
        })
        .collect();
    eps.sort();
    Pool::Endpoints(eps)
}

pub fn route(name: &str, path: PathMatch, pool: &str) -> Route {
    Route::to_pool(RouteName::new(name), path, PoolId::new(pool))
}

pub fn vhost(host: &str, tenant: Option<&str>, routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        host: HostPattern::parse(host).unwrap(),
        tenant: tenant.map(TenantId::new),
        tls: None,
        wildcard: Default::default(),
        plain_http: Default::default(),
        routes,
    }
}

/// `host` -> one Prefix `/` route -> a pool of the one endpoint `addr`.
pub fn one_host_config(host: &str, addr: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        hosts: vec![vhost(
            host,
            None,
            vec![route("r", PathMatch::prefix("/"), "p")],
        )],
        pools: [(
            PoolId::new("p"),
            Pool::Endpoints(vec![Endpoint {
                address: addr,
                weight: 1,
            }]),
        )]
        .into(),
        ..Default::default()
    }
    .seal()
}

/// A gateway serving `config` from a file in a new temporary directory.
pub async fn serve_config(tag: &str, config: &GatewayConfig, extra: &[&str]) -> (Gateway, TempDir) {
    let dir = TempDir::new(tag);
    let path = dir.0.join("config.json");
    write_config(&path, config);
    let gw = Gateway::start(&["--config", path.to_str().unwrap()], extra).await;
    (gw, dir)
}

/// Writes a config atomically (write + rename), as a config manager would.
pub fn write_config(path: &Path, config: &GatewayConfig) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// === the gateway process ===

/// A loopback port free now, for a process started later to bind. Taken
/// below the kernel's ephemeral range (32768-60999 by default): a port from
/// `bind(:0)` is an ephemeral one, which any outgoing connection (an
/// upstream's, pebble's) could take before the process binds it. Spread
/// by a per-process counter so concurrent tests do not pick the same.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..1000 {
        let k = NEXT.fetch_add(1, Relaxed);
        let port = 20_000 + (seed.wrapping_add(k.wrapping_mul(7_919)) % 12_700) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vestibule-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

fn rand_u64() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u128
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway binary: cargo's path when this harness is compiled into the
/// gateway's own tests; otherwise (the cross-crate tests) the binary next to
/// the test executable's `deps/` directory, built first if it is missing.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_vestibule-gateway") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = dir.join("vestibule-gateway");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "vestibule-gateway",
                "--bin",
                "vestibule-gateway",
            ])
            .status()
            .unwrap();
        assert!(status.success(), "building vestibule-gateway failed");
    }
    bin
}

pub struct Gateway {
    pub child: Child,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

impl Gateway {
    /// Starts the binary with `source` (`--config F` or `--manifests D`) and
    /// short health intervals, and waits for `/readyz`.
    pub async fn start(source: &[&str], extra: &[&str]) -> Gateway {
        Self::start_with(source, extra, |_| {}).await
    }

    /// `start`, logging at `info` (access log included) into `log`.
    pub async fn start_logging(source: &[&str], extra: &[&str], log: &Path) -> Gateway {
        let file = std::fs::File::create(log).unwrap();
        Self::start_with(source, extra, move |cmd| {
            cmd.env("RUST_LOG", "info").stderr(file);
        })
        .await
    }

    async fn start_with(
        source: &[&str],
        extra: &[&str],
        tune: impl FnOnce(&mut Command),
    ) -> Gateway {
        let admin = free_addr();
        let mut cmd = Command::new(gateway_bin());
        // A listener the caller chose, or a free one.
        let mut listener = |flag: &str| match extra.iter().position(|a| *a == flag) {
            Some(i) => extra[i + 1].parse::<SocketAddr>().unwrap(),
            None => {
                let addr = free_addr();
                cmd.args([flag, &addr.to_string()]);
                addr
            }
        };
        let https = listener("--https");
        let http = listener("--http");
        if !extra.contains(&"--threads") {
            cmd.args(["--threads", "2"]);
        }
        cmd.args(source)
            .args(["--admin", &admin.to_string()])
            .args(["--health-interval", "200ms", "--drain-seconds", "1"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdin(Stdio::null());
        tune(&mut cmd);
        let child = cmd.spawn().unwrap();
        let mut gw = Gateway {
            child,
            http,
            https,
            admin,
        };
        gw.wait_ready().await;
        gw
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut c = Client::new(self.admin);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("gateway exited before it was ready: {status}");
            }
            if let Ok(r) = c.get("admin", "/readyz").await {
                if r.status == 200 {
                    // The proxy listener starts with the admin one; make sure.
                    if TcpStream::connect(self.http).await.is_ok()
                        && TcpStream::connect(self.https).await.is_ok()
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway not ready within 20s");
    }

    pub fn client(&self) -> Client {
        Client::new(self.http)
    }

    pub async fn admin_get(&self, path: &str) -> Response {
        Client::new(self.admin).get("admin", path).await.unwrap()
    }

    /// Waits (up to 3 s) until `/metrics` shows `line`.
    pub async fn metrics_show(&self, line: &str) -> bool {
        eventually(Duration::from_secs(3), || async {
            self.admin_get("/metrics").await.body.contains(line)
        })
        .await
        .is_some()
    }

    /// `vestibule_config_errors_total` (0 before the first error).
    pub async fn config_errors(&self) -> f64 {
        let m = self.admin_get("/metrics").await.body;
        m.lines()
            .find(|l| l.starts_with("vestibule_config_errors_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    pub fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it holds or `within` passes; returns the time taken.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
