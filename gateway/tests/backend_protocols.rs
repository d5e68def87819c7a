//! ingress-nginx's `backend-protocol` through real sockets: an HTTPS
//! upstream with a certificate from a test CA (verified against
//! `proxy-ssl-secret`'s ca.crt, refused without it, skipped only when
//! `proxy-ssl-verify: "off"` says so), with SNI and `proxy-ssl-name`; and
//! gRPC (`GRPC`: h2c, `GRPCS`: TLS) with real tonic servers: unary calls,
//! grpc-status in trailers, deadlines, and streaming both ways.
#![allow(clippy::unwrap_used)]

mod common;
mod pki;

use std::net::SocketAddr;
use std::sync::Arc;

use common::free_addr;
use common::nginx::*;
use pki::Pki;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// An HTTPS/1.1 upstream presenting `cert`; answers `secure sni=NAME`.
async fn tls_upstream(cert: &vestibule_config::model::Certificate) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                let mut conn = BufReader::new(tls);
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if conn.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let body = format!("secure sni={sni}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nx-upstream: secure\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn ca_secret(name: &str, labelled: bool, pem: &str) -> String {
    use base64::Engine;
    let labels = if labelled {
        "labels: {vestibule.dev/upstream-ca: \"true\"}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: saas, {labels}}}\ntype: Opaque\ndata: {{ca.crt: {}}}\n",
        base64::engine::general_purpose::STANDARD.encode(pem)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_unless_told_not_to() {
    let pki = Pki::new();
    let other = Pki::new();
    // The certificate names the Service's cluster DNS name and an alias.
    let cert = pki.issue(
        &["secure.saas.svc", "alias.internal"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let up = tls_upstream(&cert).await;
    const HTTPS: &str = r#"nginx.ingress.kubernetes.io/backend-protocol: "HTTPS""#;
    let with = |extra: &str| format!("{HTTPS}, {extra}");
    let ingresses = [
        // The CA from a Secret: verified, SNI the Service's DNS name.
        (
            "ca",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca""#),
        ),
        // The CA from a ConfigMap (trust-manager's shape).
        (
            "configmap",
            with(r#"vestibule.dev/proxy-ssl-ca-configmap: "backend-ca""#),
        ),
        // The system roots don't know the test CA: refused.
        ("system", HTTPS.to_string()),
        // The wrong CA: refused.
        (
            "wrong-ca",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/other-ca""#),
        ),
        // Explicitly unverified.
        (
            "unverified",
            with(r#"nginx.ingress.kubernetes.io/proxy-ssl-verify: "off""#),
        ),
        // proxy-ssl-name: the SNI sent and the name checked.
        (
            "alias",
            with(
                r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca", nginx.ingress.kubernetes.io/proxy-ssl-name: alias.internal"#,
            ),
        ),
        (
            "misnamed",
            with(
                r#"nginx.ingress.kubernetes.io/proxy-ssl-secret: "saas/backend-ca", nginx.ingress.kubernetes.io/proxy-ssl-name: elsewhere.internal"#,
            ),
        ),
    ];
    let mut manifests = vec![
        service_at("secure", up),
        ca_secret("backend-ca", true, &pki.ca_pem),
        ca_secret("other-ca", true, &other.ca_pem),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: backend-ca, namespace: saas, labels: {{vestibule.dev/upstream-ca: \"true\"}}}}\ndata:\n  ca.crt: |\n{}",
            pki.ca_pem.lines().map(|l| format!("    {l}\n")).collect::<String>()
        ),
    ];
    for (name, annotations) in &ingresses {
        manifests.push(
            ingress(name, "secure", annotations, "2024-01-01T00:00:00Z")
                .replace("shop.test", &format!("{name}.test")),
        );
    }
    let (gw, _dir) = serve("backend-https", manifests).await;
    let mut client = gw.client();
    for (host, status, body) in [
        ("ca.test", 200, Some("secure sni=secure.saas.svc")),
        ("configmap.test", 200, Some("secure sni=secure.saas.svc")),
        ("system.test", 502, None),
        ("wrong-ca.test", 502, None),
        ("unverified.test", 200, Some("secure sni=secure.saas.svc")),
        ("alias.test", 200, Some("secure sni=alias.internal")),
        ("misnamed.test", 502, None),
    ] {
        let r = client.get(host, "/").await.unwrap();
        // A refused handshake is a failed connect: 502, or 503 once the
        // only endpoint is ejected.
        let got = if r.status == 503 { 502 } else { r.status };
        assert_eq!(got, status, "{host}: {}", r.body);
        if let Some(body) = body {
            assert_eq!(r.body.trim(), body, "{host}");
        }
    }
}

// === gRPC ===

/// gRPC messages as raw bytes: no schema needed to prove the transport.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type MessageStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, tonic::Status>> + Send>>;

/// `test.Echo`: `Unary` echoes (`fail` is NOT_FOUND, `slow` answers after
/// 2 s), `Chat` answers each message of a stream as it comes.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct Unary;

impl tonic::server::UnaryService<Vec<u8>> for Unary {
    type Response = Vec<u8>;
    type Future = BoxFuture<Result<tonic::Response<Vec<u8>>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<Vec<u8>>) -> Self::Future {
        Box::pin(async move {
            let msg = req.into_inner();
            match msg.as_slice() {
                b"fail" => Err(tonic::Status::not_found("no such thing")),
                b"slow" => {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    Ok(tonic::Response::new(msg))
                }
                _ => Ok(tonic::Response::new([b"echo:", &msg[..]].concat())),
            }
        })
    }
}

struct Chat;

impl tonic::server::StreamingService<Vec<u8>> for Chat {
    type Response = Vec<u8>;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, tonic::Status>>;
    fn call(&mut self, req: tonic::Request<tonic::Streaming<Vec<u8>>>) -> Self::Future {
        use futures::StreamExt;
        Box::pin(async move {
            let out = req
                .into_inner()
                .map(|m| m.map(|m| [b"chat:", &m[..]].concat()));
            Ok(tonic::Response::new(Box::pin(out) as MessageStream))
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(Raw);
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/Chat" => grpc.streaming(Chat, req).await,
                _ => tonic::Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A gRPC server on a free loopback port: h2c, or TLS with `identity`.
async fn grpc_upstream(identity: Option<&vestibule_config::model::Certificate>) -> SocketAddr {
    let addr = free_addr();
    let mut server = tonic::transport::Server::builder();
    if let Some(cert) = identity {
        let identity = tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    tokio::spawn(server.serve(addr, Echo));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    addr
}

fn tls_secret(name: &str, cert: &vestibule_config::model::Certificate) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: saas}}\ntype: kubernetes.io/tls\ndata: {{tls.crt: {}, tls.key: {}}}\n",
        b64(&cert.cert_pem),
        b64(&cert.key_pem)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_streams_both_ways_with_status_and_deadlines() {
    use futures::StreamExt;
    use tonic::codegen::http::uri::PathAndQuery;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

    let pki = Pki::new();
    let cert = pki.issue(&["grpc.test", "grpcs.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let up = grpc_upstream(None).await;
    // GRPCS: TLS upstream, verified against the test CA.
    let upstream_cert = pki.issue(&["echo-tls.saas.svc"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let tls_up = grpc_upstream(Some(&upstream_cert)).await;
    let grpc_ingress = |host: &str, service: &str, annotations: &str| {
        ingress(host, service, annotations, "2024-01-01T00:00:00Z")
            .replace("shop.test", &format!("{host}.test"))
            .replace(
                "  rules:",
                &format!("  tls: [{{hosts: [{host}.test], secretName: grpc-tls}}]\n  rules:"),
            )
    };
    let (gw, _dir) = serve(
        "backend-grpc",
        vec![
            service_at("echo", up),
            service_at("echo-tls", tls_up),
            tls_secret("grpc-tls", &cert),
            ca_secret("backend-ca", true, &pki.ca_pem),
            grpc_ingress(
                "grpc",
                "echo",
                r#"nginx.ingress.kubernetes.io/backend-protocol: "GRPC""#,
            ),
            grpc_ingress(
                "grpcs",
                "echo-tls",
                r#"nginx.ingress.kubernetes.io/backend-protocol: "GRPCS", nginx.ingress.kubernetes.io/proxy-ssl-secret: saas/backend-ca"#,
            ),
        ],
    )
    .await;

    // gRPC clients to the HTTPS listener (h2 by ALPN), as `host`.
    let (port, ca) = (gw.https.port(), pki.ca_pem.clone());
    let connect = move |host: &'static str| {
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .origin(format!("https://{host}").parse().unwrap())
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&ca))
                    .domain_name(host),
            )
            .unwrap();
        async move { endpoint.connect().await }
    };
    let unary = PathAndQuery::from_static("/test.Echo/Unary");

    // GRPCS: the same call to the TLS upstream.
    let mut client = tonic::client::Grpc::new(connect("grpcs.test").await.unwrap());
    client.ready().await.unwrap();
    let r = client
        .unary(tonic::Request::new(b"secure".to_vec()), unary.clone(), Raw)
        .await
        .unwrap();
    assert_eq!(r.into_inner(), b"echo:secure");

    let mut client = tonic::client::Grpc::new(connect("grpc.test").await.unwrap());

    client.ready().await.unwrap();
    let r = client
        .unary(tonic::Request::new(b"hello".to_vec()), unary.clone(), Raw)
        .await
        .unwrap();
    assert_eq!(r.into_inner(), b"echo:hello");

    // grpc-status and its message come back in the trailers.
    client.ready().await.unwrap();
    let e = client
        .unary(tonic::Request::new(b"fail".to_vec()), unary.clone(), Raw)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(e.message(), "no such thing");

    // The deadline (grpc-timeout) reaches the server, which gives up on it.
    let mut slow = tonic::Request::new(b"slow".to_vec());
    slow.set_timeout(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    client.ready().await.unwrap();
    let e = client.unary(slow, unary.clone(), Raw).await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{e:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));

    // Streaming both ways: each message is answered before the next is
    // sent, so nothing waits for the end of the request stream.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let outbound = tokio_stream_from(rx);
    client.ready().await.unwrap();
    let mut replies = client
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static("/test.Echo/Chat"),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..5 {
        let msg = format!("m{i}").into_bytes();
        tx.send(msg.clone()).await.unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), replies.next())
            .await
            .expect("a reply before the stream ends")
            .unwrap()
            .unwrap();
        assert_eq!(reply, [b"chat:", &msg[..]].concat());
    }
    drop(tx);
    assert!(replies.next().await.is_none());
}

/// An mpsc receiver as a stream.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl futures::Stream<Item = Vec<u8>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
