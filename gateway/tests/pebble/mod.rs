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
            "externalAccountBindingRequired": false,
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
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
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
