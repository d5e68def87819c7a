//! A real ACME CA on loopback for the tests: Debian's `pebble` (Let's
//! Encrypt's test CA) behind a cuttable TCP proxy (a CA outage), with
//! `pebble-challtestsrv` as its DNS server answering every name with
//! 127.0.0.1, so pebble validates against the gateway under test.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::common::{free_addr, read_response, Response, TempDir};
use crate::pki::Pki;

pub struct Pebble {
    pebble: Child,
    dns: Child,
    /// The ACME directory, through the proxy.
    pub directory: String,
    /// Roots of pebble's own HTTPS listener (the issuer's `caBundle`).
    pub listener_ca_pem: String,
    /// The root pebble issues under: clients verify the gateway with it.
    pub root_pem: String,
    down: watch::Sender<bool>,
    /// Pebble's ACME listener (not through the proxy) and its PKI.
    listen: SocketAddr,
    listener_pki: Pki,
    _dir: TempDir,
}

/// Whether `pebble` is installed (`.ci/run` installs it).
pub fn available() -> bool {
    Command::new("pebble")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1.
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with_eab(http_port, tls_port, None).await
    }

    /// Like `start`, and when `eab` is `(key id, base64url HMAC key)`
    /// pebble requires External Account Binding with that key.
    pub async fn start_with_eab(
        http_port: u16,
        tls_port: u16,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        assert!(
            available(),
            "pebble is not installed (apt-get install pebble; .ci/run does it)"
        );
        let dir = TempDir::new("pebble");
        let pki = Pki::new();
        let listener_cert = pki.issue(&["127.0.0.1", "localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let write = |name: &str, text: &str| {
            let path = dir.0.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cert = write("cert.pem", &listener_cert.cert_pem);
        let key = write("key.pem", &listener_cert.key_pem);
        let (listen, management, dns) = (free_addr(), free_addr(), free_addr());
        let config = serde_json::json!({"pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
            "externalAccountMACKeys": eab.map(|(kid, key)| serde_json::json!({kid: key})),
        }});
        let config = write("pebble.json", &config.to_string());
        let log = |name: &str| std::fs::File::create(dir.0.join(name)).unwrap();
        let dns_child = Command::new("pebble-challtestsrv")
            .arg(format!("-dns01={dns}"))
            .args(["-http01=", "-https01=", "-tlsalpn01="])
            .arg(format!("-management={}", free_addr()))
            .args(["-defaultIPv4=127.0.0.1", "-defaultIPv6="])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg(format!("-dnsserver={dns}"))
            .args(["-strict=false"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(listen).await;
        wait_listening(management).await;
        let (down, down_rx) = watch::channel(false);
        let proxy = cuttable_proxy(listen, down_rx).await;
        let root_pem = get(&pki, management, "/roots/0").await;
        assert!(root_pem.contains("BEGIN CERTIFICATE"), "{root_pem}");
        Pebble {
            pebble,
            dns: dns_child,
            directory: format!("https://127.0.0.1:{}/dir", proxy.port()),
            listener_ca_pem: pki.ca_pem.clone(),
            root_pem,
            down,
            listen,
            listener_pki: pki,
            _dir: dir,
        }
    }

    /// Cuts (or restores) the CA: connections through the proxy are
    /// dropped, open ones closed.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// The pebble log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("pebble.log")).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self._dir.0.clone()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.dns.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.wait();
    }
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "pebble not listening on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy to `target` that refuses and closes everything while `down`.
async fn cuttable_proxy(target: SocketAddr, down: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if *down.borrow() {
                drop(client);
                continue;
            }
            let mut down = down.clone();
            tokio::spawn(async move {
                let Ok(mut upstream) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    _ = down.wait_for(|d| *d) => {}
                }
            });
        }
    });
    addr
}

/// GET over HTTPS from pebble's management listener.
async fn get(pki: &Pki, addr: SocketAddr, path: &str) -> String {
    let config = pki.client(&[b"http/1.1"], false);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// A TLS client (HTTP/1.1, no resumption) trusting only `roots` (PEM).
pub fn client(roots: &[&str]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One verified HTTPS GET to `host` (as SNI and Host) on `addr`.
pub async fn https_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<Response, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    read_response(&mut BufReader::new(tls)).await
}

/// An ACME directory that is pebble's plus ACME Renewal Information
/// (RFC 9773), which Debian's pebble 2.4 lacks: `/dir` serves pebble's
/// directory with `renewalInfo` pointing here, `/ari/ID` answers a window
/// already open for the first certificate asked about (renew now) and one a
/// month away for any other. Everything else goes to pebble directly.
pub struct AriDirectory {
    pub directory: String,
    /// Roots of this server's certificate (add to the issuer's caBundle).
    pub ca_pem: String,
    /// The certificate ids asked about, in order.
    pub asked: Arc<std::sync::Mutex<Vec<String>>>,
}

impl AriDirectory {
    pub async fn start(pebble: &Pebble) -> AriDirectory {
        let pki = Pki::new();
        let leaf = pki.issue(&["127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = listener.local_addr().unwrap();
        let upstream_dir = get(&pebble.listener_pki, pebble.listen, "/dir").await;
        let mut dir: serde_json::Value = serde_json::from_str(&upstream_dir).unwrap();
        dir["renewalInfo"] = format!("https://{me}/ari").into();
        let dir = dir.to_string();
        let asked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let seen = asked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, dir, seen) = (acceptor.clone(), dir.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut conn = BufReader::new(tls);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match tokio::io::AsyncBufReadExt::read_line(&mut conn, &mut line).await
                            {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => head.push_str(&line),
                            }
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let body = if path == "/dir" {
                            dir.clone()
                        } else if let Some(id) = path.strip_prefix("/ari/") {
                            let first = {
                                let mut seen = seen.lock().unwrap();
                                let first = seen.first().is_none_or(|f| f == id);
                                seen.push(id.to_string());
                                first
                            };
                            let (start, end) = if first {
                                (-120, -60)
                            } else {
                                (30 * 86400, 31 * 86400)
                            };
                            serde_json::json!({"suggestedWindow": {"start": from_now(start), "end": from_now(end)}}).to_string()
                        } else {
                            String::new()
                        };
                        let status = if body.is_empty() {
                            "404 Not Found"
                        } else {
                            "200 OK"
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nRetry-After: 3600\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.get_mut().write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        AriDirectory {
            directory: format!("https://{me}/dir"),
            ca_pem: pki.ca_pem.clone(),
            asked,
        }
    }
}

/// RFC 3339 for a time `secs` from now.
pub fn from_now(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    k8s_openapi::jiff::Timestamp::from_second(now + secs)
        .unwrap()
        .to_string()
}
