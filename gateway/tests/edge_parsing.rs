//! Hostile HTTP/1.x at the edge: request smuggling shapes, malformed
//! headers, oversized requests. Each is sent as raw bytes through a real
//! socket; a raw TCP upstream records exactly what the gateway forwarded, so
//! the tests prove both the status the client gets and that nothing an
//! upstream could parse differently ever reaches it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{one_host_config, write_config, Gateway, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP upstream that records every byte it receives and answers each
/// request head with a fixed 200 (it does not parse bodies: whatever the
/// gateway sends after a head is recorded as-is, smuggled bytes included).
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut pending = Vec::new();
                    loop {
                        let n =
                            match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
                                .await
                            {
                                Ok(Ok(n)) if n > 0 => n,
                                _ => return,
                            };
                        rec.lock().unwrap().extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(end) = find(&pending, b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nX-UpStream: rec\r\n\r\nok\n")
                                .await;
                        }
                    }
                });
            }
        });
        Recorder { addr, seen }
    }

    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.seen.lock().unwrap())).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes on a fresh connection; returns every byte read until
/// the gateway closes or goes quiet.
async fn raw_bytes(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends raw bytes on a fresh connection; returns every response status
/// line read until the gateway closes or goes quiet.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<String> {
    raw_bytes(addr, bytes)
        .await
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_string)
        .collect()
}

async fn gateway(rec: &Recorder, dir: &TempDir, extra: &[&str]) -> Gateway {
    let config = one_host_config("a.test", rec.addr);
    let file = dir.0.join("config.json");
    write_config(&file, &config);
    Gateway::start(&["--config", file.to_str().unwrap()], extra).await
}

/// What the gateway must do with a request.
#[derive(Debug)]
enum Expect {
    /// Rejected with this status; the upstream sees nothing at all.
    Reject(u16),
    /// Rejected with this status; the upstream may have seen the head but
    /// never a byte past the (already framed) body.
    RejectAfterHead(u16),
    /// Served (200), and the upstream saw exactly one request whose head
    /// contains these lines, with nothing after the expected body.
    Forward {
        lines: &'static [&'static str],
        body: &'static str,
    },
}

use Expect::*;

fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    vec![
        ("plain", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(),
            Forward { lines: &["GET / HTTP/1.1", "Host: a.test"], body: "" }),
        // Both framings (CL.TE / TE.CL smuggling): chunked wins, Content-Length
        // is dropped and the connection closes after the response (RFC 9112
        // §6.1), so the bytes after the chunked body never become a request.
        ("content-length-and-chunked", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(),
            Forward { lines: &["POST / HTTP/1.1", "Transfer-Encoding: chunked"], body: "0\r\n\r\n" }),
        ("duplicate-content-length", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".to_vec(), Reject(400)),
        ("content-length-list", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(), Reject(400)),
        ("negative-content-length", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n".to_vec(), Reject(400)),
        ("plus-content-length", b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: +3\r\n\r\nabc".to_vec(), Reject(400)),
        ("te-chunked-identity", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        ("te-identity-chunked", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        ("te-space-before-colon", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        ("te-unknown-coding", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        ("te-twice", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        ("te-in-http10", b"POST / HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(), Reject(400)),
        // Extra whitespace and casing are normalized: one canonical header goes up.
        ("te-odd-whitespace", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding:  \tchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            Forward { lines: &["POST / HTTP/1.1", "Transfer-Encoding: chunked"], body: "3\r\nabc\r\n0\r\n\r\n" }),
        ("te-mixed-case", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: ChUnKeD\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            Forward { lines: &["POST / HTTP/1.1", "Transfer-Encoding: chunked"], body: "3\r\nabc\r\n0\r\n\r\n" }),
        ("invalid-chunk-size", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(), RejectAfterHead(400)),
        ("overflowing-chunk-size", b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nabc\r\n0\r\n\r\n".to_vec(), RejectAfterHead(400)),
        // Bare LF line ends are accepted and re-emitted as CRLF: the upstream
        // never sees a bare LF it might split differently.
        ("bare-lf-request", b"GET / HTTP/1.1\nHost: a.test\n\n".to_vec(),
            Forward { lines: &["GET / HTTP/1.1", "Host: a.test"], body: "" }),
        ("bare-lf-inside-head", b"GET / HTTP/1.1\r\nHost: a.test\nX-A: b\r\n\r\n".to_vec(),
            Forward { lines: &["GET / HTTP/1.1", "Host: a.test", "X-A: b"], body: "" }),
        ("space-in-header-name", b"GET / HTTP/1.1\r\nHost: a.test\r\nX Bad: 1\r\n\r\n".to_vec(), Reject(400)),
        ("nul-in-header-value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\0b\r\n\r\n".to_vec(), Reject(400)),
        ("cr-in-header-value", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\rb\r\n\r\n".to_vec(), Reject(400)),
        ("obsolete-line-folding", b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\r\n b\r\n\r\n".to_vec(), Reject(400)),
        ("absolute-uri-host-mismatch", b"GET http://evil.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n".to_vec(), Reject(400)),
        ("two-host-headers", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: evil.test\r\n\r\n".to_vec(), Reject(400)),
        ("http11-without-host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), Reject(400)),
        // HTTP/1.0 may omit Host: no virtual host matches, so 404.
        ("http10-without-host", b"GET / HTTP/1.0\r\n\r\n".to_vec(), Reject(404)),
        ("long-request-target", format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(16 * 1024)).into_bytes(), Reject(414)),
        ("huge-request-target", format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(70_000)).into_bytes(), Reject(400)),
        ("too-many-headers", format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many_headers}\r\n").into_bytes(), Reject(431)),
        ("oversized-headers", format!("GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n", "b".repeat(40 * 1024)).into_bytes(), Reject(431)),
        ("get-with-body", b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            Forward { lines: &["GET / HTTP/1.1", "Content-Length: 5"], body: "hello" }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_rejected_or_normalized() {
    let rec = Recorder::start().await;
    let dir = TempDir::new("edge");
    let gw = gateway(&rec, &dir, &[]).await;
    let mut failures = Vec::new();
    let total = cases().len();
    for (name, bytes, expect) in cases() {
        let statuses = raw(gw.http, &bytes).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let seen = rec.take();
        let status = |s: &str| {
            s.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok())
        };
        let got: Vec<u16> = statuses.iter().filter_map(|s| status(s)).collect();
        let ok = match &expect {
            Reject(code) => got == [*code] && seen.is_empty(),
            RejectAfterHead(code) => {
                got == [*code]
                    && seen
                        .split_once("\r\n\r\n")
                        .is_none_or(|(_, rest)| rest.is_empty())
            }
            Forward { lines, body } => {
                let heads = seen.matches("HTTP/1.1\r\n").count();
                let (head, rest) = seen.split_once("\r\n\r\n").unwrap_or(("", ""));
                let no_bare_lf = head.split("\r\n").all(|l| !l.contains('\n'));
                got == [200]
                    && heads == 1
                    && no_bare_lf
                    && lines
                        .iter()
                        .all(|l| head.split("\r\n").any(|h| h.eq_ignore_ascii_case(l)))
                    && rest == *body
            }
        };
        if !ok {
            let shown: String = seen.chars().take(300).collect();
            failures.push(format!(
                "{name}: expected {expect:?}, got {got:?}; upstream saw {shown:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Header names reach the upstream, and the upstream's reach the client, as
/// they were sent (the default, like nginx), or with `--header-case
/// canonical` as HTTP/2 spells them (lowercase, a few well-known names
/// titled), the way Envoy and HAProxy send them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_case_unless_canonical_is_asked() {
    let request = b"GET / HTTP/1.1\r\nhOsT: a.test\r\nX-CuStOm: 1\r\nuser-AGENT: t\r\n\r\n";
    let cases: [(&[&str], &[&str], &[&str]); 2] = [
        (
            &[],
            &["hOsT: a.test", "X-CuStOm: 1", "user-AGENT: t"],
            &["X-UpStream: rec", "content-length: 3"],
        ),
        (
            &["--header-case", "canonical"],
            &["Host: a.test", "x-custom: 1", "user-agent: t"],
            &["x-upstream: rec", "Content-Length: 3"],
        ),
    ];
    for (extra, upstream_lines, client_lines) in cases {
        let rec = Recorder::start().await;
        let dir = TempDir::new("case");
        let gw = gateway(&rec, &dir, extra).await;
        // Twice on one connection: the second request and response go
        // through a reused downstream session and a pooled upstream one.
        let mut conn = TcpStream::connect(gw.http).await.unwrap();
        let mut response = String::new();
        for _ in 0..2 {
            conn.write_all(request).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.ends_with(b"ok\n") {
                let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf));
                let n = read.await.unwrap().unwrap();
                assert!(n > 0, "{extra:?}: closed after {got:?}");
                got.extend_from_slice(&buf[..n]);
            }
            response.push_str(&String::from_utf8_lossy(&got));
        }
        let seen = rec.take();
        for (what, text, lines) in [
            ("upstream", &seen, upstream_lines),
            ("client", &response, client_lines),
        ] {
            let heads: Vec<&str> = text.split("\r\n\r\n").filter(|h| !h.is_empty()).collect();
            assert!(
                heads.len() >= 2,
                "{extra:?}: two heads at the {what}: {text:?}"
            );
            for head in &heads[..2] {
                let head_lines: Vec<&str> = head.split("\r\n").collect();
                for line in lines {
                    assert!(
                        head_lines.contains(line),
                        "{extra:?}: the {what} saw no {line:?} in {head:?}"
                    );
                }
            }
        }
    }
}
