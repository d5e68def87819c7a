//! WebSocket upgrades through the gateway, with a raw upstream and raw
//! frames: messages both ways; a tunnel carrying traffic in one direction
//! only lives past every per-read timeout (each byte either way restarts
//! them); a tunnel with no traffic either way is closed after the shorter
//! of `--client-timeout` and `--upstream-timeout`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A WebSocket upstream: `/echo` sends each client frame back, `/push`
/// sends a frame every 200 ms, `/sink` reads and never writes, `/quiet`
/// does nothing.
async fn ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = BufReader::new(sock);
                let mut line = String::new();
                conn.read_line(&mut line).await.unwrap();
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if conn.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let _ = conn
                    .get_mut()
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
                    .await;
                match path.as_str() {
                    "/echo" => loop {
                        let Some(payload) = read_frame(&mut conn).await else {
                            return;
                        };
                        if conn
                            .get_mut()
                            .write_all(&frame(&payload, false))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    },
                    "/push" => {
                        for i in 0u32.. {
                            let msg = format!("tick {i}");
                            if conn
                                .get_mut()
                                .write_all(&frame(msg.as_bytes(), false))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    "/sink" => while read_frame(&mut conn).await.is_some() {},
                    _ => {
                        let mut buf = [0u8; 64];
                        let _ = conn.read(&mut buf).await;
                    }
                }
            });
        }
    });
    addr
}

/// A text frame of `payload` (< 126 bytes), masked as clients must.
fn frame(payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut out = vec![0x81, payload.len() as u8 | if masked { 0x80 } else { 0 }];
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One frame's payload (unmasked), or `None` at the end of the stream.
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.ok()?;
    let len = (head[1] & 0x7f) as usize;
    let mask = if head[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await.ok()?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    if let Some(m) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Some(payload)
}

/// Opens a WebSocket to `path` through the gateway.
async fn open(gw: &Gateway, path: &str) -> BufReader<TcpStream> {
    let mut s = BufReader::new(TcpStream::connect(gw.http).await.unwrap());
    s.get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut status = String::new();
    s.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut h = String::new();
        s.read_line(&mut h).await.unwrap();
        if h == "\r\n" {
            break;
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_carry_messages_and_only_idle_tunnels_time_out() {
    let up = ws_upstream().await;
    let dir = TempDir::new("websocket");
    let path = dir.0.join("config.json");
    write_config(&path, &one_host_config("ws.test", up));
    // Every per-read timeout short: 1 s from the client, 2 s from upstream.
    let gw = Gateway::start(
        &["--config", path.to_str().unwrap()],
        &[
            "--client-timeout",
            "1s",
            "--upstream-timeout",
            "2s",
            "--header-timeout",
            "1s",
        ],
    )
    .await;

    // Messages both ways.
    let mut ws = open(&gw, "/echo").await;
    for msg in ["hello", "world", "again"] {
        ws.get_mut()
            .write_all(&frame(msg.as_bytes(), true))
            .await
            .unwrap();
        let back = tokio::time::timeout(Duration::from_secs(2), read_frame(&mut ws))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }

    // Server to client only, for 4 s: the client is silent past its 1 s
    // read timeout, and the tunnel carries on.
    let mut ws = open(&gw, "/push").await;
    let started = Instant::now();
    let mut got = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let f = tokio::time::timeout(Duration::from_secs(1), read_frame(&mut ws)).await;
        assert!(
            matches!(f, Ok(Some(_))),
            "push tunnel cut after {:?}",
            started.elapsed()
        );
        got += 1;
    }
    assert!(got >= 15, "{got}");

    // Client to server only, for 4 s: the upstream is silent past its 2 s
    // read timeout, and the tunnel carries on.
    let mut ws = open(&gw, "/sink").await;
    for i in 0..13 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.get_mut()
            .write_all(&frame(format!("m{i}").as_bytes(), true))
            .await
            .unwrap_or_else(|e| panic!("sink tunnel cut at message {i}: {e}"));
    }
    let mut buf = [0u8; 1];
    let still_open = tokio::time::timeout(Duration::from_millis(200), ws.read(&mut buf)).await;
    assert!(still_open.is_err(), "sink tunnel closed: {still_open:?}");

    // No traffic either way: closed after the shorter timeout (1 s).
    let mut ws = open(&gw, "/quiet").await;
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}
