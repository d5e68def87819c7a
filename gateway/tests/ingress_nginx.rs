//! A cluster migrating from ingress-nginx, through real sockets: a canary
//! Ingress (`canary-weight`, `canary-by-header`) takes its share of the
//! primary's traffic and never the whole of it, even when it is the older
//! object; snippets are refused and have no effect; and each supported
//! annotation (redirects, app-root, upstream-vhost, timeouts, source
//! ranges, body size, ssl-redirect, use-regex and rewrite-target, CORS,
//! auth-url) does what ingress-nginx users expect.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::nginx::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_canary_takes_its_weight_and_its_header_never_the_whole_route() {
    let web = Upstream::start("web").await;
    let canary = Upstream::start("web-canary").await;
    let dir = TempDir::new("ingress-nginx-canary");
    let manifests = [
        CLASS.to_string(),
        service("web", &web),
        service("web-canary", &canary),
        // The canary is older: before, it took all of shop.test.
        ingress(
            "shop-canary",
            "web-canary",
            r#"nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-weight: "20", nginx.ingress.kubernetes.io/canary-by-header: X-Canary, nginx.ingress.kubernetes.io/canary-by-cookie: beta"#,
            "2024-01-01T00:00:00Z",
        ),
        ingress(
            "shop",
            "web",
            r#"nginx.ingress.kubernetes.io/configuration-snippet: "more_set_headers X-Injected: 1;""#,
            "2024-06-01T00:00:00Z",
        ),
    ]
    .join("\n---\n");
    std::fs::write(dir.0.join("shop.yaml"), manifests).unwrap();
    let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], &[]).await;
    let mut client = gw.client();

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..500 {
        let r = client.get("shop.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            !r.headers.contains_key("x-injected"),
            "a snippet took effect"
        );
        *seen.entry(r.upstream().unwrap().to_string()).or_default() += 1;
    }
    // 20% of 500, by smooth weighted round robin.
    let to_canary = seen.get("web-canary").copied().unwrap_or(0);
    assert!((90..=110).contains(&to_canary), "{seen:?}");

    for (value, want) in [("always", "web-canary"), ("never", "web")] {
        for _ in 0..10 {
            let r = client
                .request("GET", "shop.test", "/", &[("X-Canary", value)])
                .await
                .unwrap();
            assert_eq!(r.upstream(), Some(want), "X-Canary: {value}");
            let cookie = format!("session=1; beta={value}");
            let r = client
                .request("GET", "shop.test", "/", &[("Cookie", &cookie)])
                .await
                .unwrap();
            assert_eq!(r.upstream(), Some(want), "Cookie: {cookie}");
        }
    }
    // The header wins over the cookie, as in ingress-nginx.
    let r = client
        .request(
            "GET",
            "shop.test",
            "/",
            &[("X-Canary", "never"), ("Cookie", "beta=always")],
        )
        .await
        .unwrap();
    assert_eq!(r.upstream(), Some("web"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_app_root_upstream_vhost_and_read_timeout_annotations() {
    let app = Upstream::start("app").await;
    let (gw, _dir) = gateway_with(
        "ingress-nginx-annotations",
        &app,
        &[
            (
                "moved",
                "old.test",
                r#"nginx.ingress.kubernetes.io/permanent-redirect: "https://new.test/landing", nginx.ingress.kubernetes.io/permanent-redirect-code: "308""#,
            ),
            (
                "app",
                "app.test",
                r#"nginx.ingress.kubernetes.io/app-root: /app, nginx.ingress.kubernetes.io/upstream-vhost: internal.app.svc, nginx.ingress.kubernetes.io/proxy-read-timeout: "1""#,
            ),
        ],
    )
    .await;
    let mut client = gw.client();

    let r = client.get("old.test", "/anything").await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("https://new.test/landing")
    );

    let r = client.get("app.test", "/").await.unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("http://app.test/app")
    );

    let r = client.get("app.test", "/app").await.unwrap();
    assert_eq!(r.upstream(), Some("app"));
    assert_eq!(
        r.seen().get("host").map(String::as_str),
        Some("internal.app.svc")
    );
    // proxy-read-timeout: 1 s, then 504.
    let r = client.get("app.test", "/slow?delay=2s").await.unwrap();
    assert_eq!(r.status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_and_body_size_annotations() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = Upstream::start("app").await;
    let (gw, _dir) = gateway_with(
        "ingress-nginx-limits",
        &app,
        &[
            (
                "office",
                "office.test",
                r#"nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8, 192.168.1.7""#,
            ),
            (
                "local",
                "local.test",
                r#"nginx.ingress.kubernetes.io/whitelist-source-range: "127.0.0.0/8""#,
            ),
            (
                "blocked",
                "blocked.test",
                r#"nginx.ingress.kubernetes.io/denylist-source-range: "127.0.0.1/32""#,
            ),
            (
                "upload",
                "upload.test",
                r#"nginx.ingress.kubernetes.io/proxy-body-size: 1k"#,
            ),
        ],
    )
    .await;
    let mut client = gw.client();
    // The test client is 127.0.0.1.
    assert_eq!(client.get("office.test", "/").await.unwrap().status, 403);
    assert_eq!(
        client.get("local.test", "/").await.unwrap().upstream(),
        Some("app")
    );
    assert_eq!(client.get("blocked.test", "/").await.unwrap().status, 403);

    // A declared body over 1 KiB: 413 before any of it is read.
    let r = client
        .request("POST", "upload.test", "/", &[("content-length", "2048")])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    // A chunked one: cut at 1 KiB with 413, never passed on whole.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let chunk = "x".repeat(800);
    let req = format!(
        "POST / HTTP/1.1\r\nHost: upload.test\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Within the limit: served.
    let r = client
        .request("POST", "upload.test", "/", &[("content-length", "0")])
        .await
        .unwrap();
    assert_eq!(r.upstream(), Some("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_annotations_decide_plain_http() {
    let app = Upstream::start("app").await;
    let tls = |text: String, host: &str| {
        text.replace(
            "spec:\n  ingressClassName: vestibule",
            &format!("spec:\n  tls: [{{hosts: [{host}], secretName: absent}}]\n  ingressClassName: vestibule"),
        )
    };
    let dir = TempDir::new("ingress-nginx-ssl-redirect");
    let manifests = [
        CLASS.to_string(),
        service("app", &app),
        // A TLS host: plain HTTP redirects, unless ssl-redirect says no.
        tls(
            ingress("tls", "app", "", "2024-01-01T00:00:00Z").replace("shop.test", "tls.test"),
            "tls.test",
        ),
        tls(
            ingress(
                "plain",
                "app",
                r#"nginx.ingress.kubernetes.io/ssl-redirect: "false""#,
                "2024-01-01T00:00:00Z",
            )
            .replace("shop.test", "plain.test"),
            "plain.test",
        ),
        // No TLS here (it ends in front of us): force-ssl-redirect still redirects.
        ingress(
            "forced",
            "app",
            r#"nginx.ingress.kubernetes.io/force-ssl-redirect: "true""#,
            "2024-01-01T00:00:00Z",
        )
        .replace("shop.test", "forced.test"),
    ]
    .join("\n---\n");
    std::fs::write(dir.0.join("all.yaml"), manifests).unwrap();
    let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], &[]).await;
    let mut client = gw.client();
    assert_eq!(client.get("tls.test", "/").await.unwrap().status, 308);
    assert_eq!(
        client.get("plain.test", "/").await.unwrap().upstream(),
        Some("app")
    );
    let r = client.get("forced.test", "/x").await.unwrap();
    assert_eq!(r.status, 308);
    assert!(
        r.headers["location"].starts_with("https://forced.test"),
        "{:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_send_timeout_annotations_bound_the_upstream_waits() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An endpoint whose accept queue is full: SYNs go unanswered, so a
    // connect hangs until the gateway gives up.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(1).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(full_addr),
        )
        .await
        {
            Ok(Ok(s)) => queued.push(s),
            _ => break,
        }
    }
    // An endpoint that accepts and never reads: its socket buffers fill.
    let deaf = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_addr = deaf.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = deaf.accept().await {
            held.push(s);
        }
    });
    let (gw, _dir) = serve(
        "ingress-nginx-timeouts",
        vec![
            service_at("full", full_addr),
            service_at("deaf", deaf_addr),
            ingress(
                "connect",
                "full",
                r#"nginx.ingress.kubernetes.io/proxy-connect-timeout: "1""#,
                "2024-01-01T00:00:00Z",
            )
            .replace("shop.test", "connect.test"),
            ingress(
                "send",
                "deaf",
                r#"nginx.ingress.kubernetes.io/proxy-send-timeout: "1", nginx.ingress.kubernetes.io/proxy-read-timeout: "30""#,
                "2024-01-01T00:00:00Z",
            )
            .replace("shop.test", "send.test"),
        ],
    )
    .await;

    // Connect: given up after 1 s (the default is 3 s), not served.
    let started = Instant::now();
    let r = gw.client().get("connect.test", "/").await.unwrap();
    let took = started.elapsed();
    assert!(r.status >= 502, "{}", r.status);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );

    // Send: a 64 MiB body the upstream never reads stalls the gateway's
    // writes; after 1 s without progress the exchange ends with 504 (the
    // read timeout is 30 s, the default send timeout 60 s).
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let size = 64 << 20;
    s.write_all(
        format!("POST / HTTP/1.1\r\nHost: send.test\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..(size / chunk.len()) {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    let took = started.elapsed();
    writer.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 504"), "{took:?}: {text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    drop(queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_regex_paths_and_rewrite_target_captures() {
    let app = Upstream::start("app").await;
    let tools = |name: &str, path: &str, annotations: &str| {
        ingress(name, "app", annotations, "2024-01-01T00:00:00Z")
            .replace("shop.test", "tools.test")
            .replace(
                "{path: /, pathType: Prefix,",
                &format!("{{path: \"{path}\", pathType: ImplementationSpecific,"),
            )
    };
    let (gw, _dir) = serve(
        "ingress-nginx-regex",
        vec![
            service("app", &app),
            tools(
                "grafana",
                "/grafana/?(.*)",
                r#"nginx.ingress.kubernetes.io/rewrite-target: /$1, nginx.ingress.kubernetes.io/use-regex: "true""#,
            ),
            tools(
                "dashboard",
                "/dashboard(/|$)(.*)",
                r#"nginx.ingress.kubernetes.io/rewrite-target: /$2"#,
            ),
            ingress("site", "app", "", "2024-01-01T00:00:00Z").replace("shop.test", "tools.test"),
            tools(
                "api",
                "/v[0-9]+/users",
                r#"nginx.ingress.kubernetes.io/use-regex: "true""#,
            )
            .replace("tools.test", "api.test"),
        ],
    )
    .await;
    let mut client = gw.client();
    for (host, path, target) in [
        ("tools.test", "/grafana/d/abc?x=1", Some("/d/abc?x=1")),
        ("tools.test", "/GRAFANA/login", Some("/login")),
        ("tools.test", "/grafana", Some("/")),
        ("tools.test", "/dashboard", Some("/")),
        ("tools.test", "/dashboard/api/v1/pods", Some("/api/v1/pods")),
        // Not the dashboard's pattern: the plain Prefix route, unchanged.
        ("tools.test", "/dashboardx", Some("/dashboardx")),
        ("api.test", "/v2/users/7", Some("/v2/users/7")),
        ("api.test", "/vx/users", None),
    ] {
        let r = client.get(host, path).await.unwrap();
        match target {
            Some(t) => {
                assert_eq!(r.status, 200, "{host}{path}");
                assert_eq!(
                    r.headers.get("x-target").map(String::as_str),
                    Some(t),
                    "{host}{path}"
                );
            }
            None => assert_eq!(r.status, 404, "{host}{path}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_and_admitted_origins_marked() {
    let app = Upstream::start("app").await;
    let (gw, _dir) = gateway_with(
        "ingress-nginx-cors",
        &app,
        &[
            ("open", "open.test", r#"nginx.ingress.kubernetes.io/enable-cors: "true""#),
            (
                "listed",
                "api.test",
                r#"nginx.ingress.kubernetes.io/enable-cors: "true", nginx.ingress.kubernetes.io/cors-allow-origin: "https://app.example.com, https://*.tools.example.com", nginx.ingress.kubernetes.io/cors-expose-headers: X-Request-Id, nginx.ingress.kubernetes.io/cors-allow-credentials: "false", nginx.ingress.kubernetes.io/cors-max-age: "600""#,
            ),
        ],
    )
    .await;
    let mut client = gw.client();
    let preflight = [
        ("Origin", "https://a.tools.example.com"),
        ("Access-Control-Request-Method", "POST"),
    ];

    // An admitted origin's preflight: 204 here, never proxied.
    let before = app.requests().len();
    let r = client
        .request("OPTIONS", "api.test", "/items", &preflight)
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    let h = |n: &str| r.headers.get(n).cloned().unwrap_or_default();
    assert_eq!(
        h("access-control-allow-origin"),
        "https://a.tools.example.com"
    );
    assert_eq!(h("access-control-max-age"), "600");
    assert!(h("access-control-allow-methods").contains("POST"));
    assert_eq!(h("vary"), "Origin");
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
    assert_eq!(app.requests().len(), before);

    // An admitted origin's request: proxied, its response marked.
    let r = client
        .request(
            "GET",
            "api.test",
            "/items",
            &[("Origin", "https://app.example.com")],
        )
        .await
        .unwrap();
    assert_eq!(r.upstream(), Some("app"));
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example.com")
    );
    assert_eq!(
        r.headers
            .get("access-control-expose-headers")
            .map(String::as_str),
        Some("X-Request-Id")
    );

    // Another origin: no CORS headers, and its OPTIONS goes upstream.
    for method in ["GET", "OPTIONS"] {
        let r = client
            .request(
                method,
                "api.test",
                "/items",
                &[("Origin", "https://evil.test")],
            )
            .await
            .unwrap();
        assert_eq!(r.upstream(), Some("app"), "{method}");
        assert!(
            !r.headers.contains_key("access-control-allow-origin"),
            "{method}"
        );
    }

    // Any origin (ingress-nginx's default): `*`, with credentials.
    let r = client
        .request("OPTIONS", "open.test", "/", &preflight)
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("*")
    );
    assert_eq!(
        r.headers
            .get("access-control-allow-credentials")
            .map(String::as_str),
        Some("true")
    );
}

/// An auth service: `Authorization: Bearer good` passes (with
/// `X-Auth-User: alice`), `forbidden` gets 403, `slow` no answer in time,
/// `broken` a 502, none a 401 with a challenge. Every request it gets is
/// kept (request line and headers).
async fn auth_service() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(sock);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    log.lock().unwrap().push(head.clone());
                    let token = head.lines().find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("authorization: bearer ")
                            .map(str::to_string)
                    });
                    let answer: &[u8] = match token.as_deref() {
                        Some("good") => b"HTTP/1.1 200 OK\r\nX-Auth-User: alice\r\nX-Other: no\r\nContent-Length: 0\r\n\r\n",
                        Some("forbidden") => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
                        Some("broken") => b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
                        Some("slow") => {
                            tokio::time::sleep(std::time::Duration::from_secs(8)).await;
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                        }
                        _ => b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"shop\"\r\nContent-Length: 0\r\n\r\n",
                    };
                    if conn.get_mut().write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_url_asks_an_auth_service_before_proxying() {
    let app = Upstream::start("app").await;
    let (auth, seen) = auth_service().await;
    let url = format!("http://{auth}/check?for=$escaped_request_uri");
    let (gw, _dir) = gateway_with(
        "ingress-nginx-auth",
        &app,
        &[
            (
                "guarded",
                "shop.test",
                &format!(
                    r#"nginx.ingress.kubernetes.io/auth-url: "{url}", nginx.ingress.kubernetes.io/auth-response-headers: "X-Auth-User""#
                ),
            ),
            (
                "signin",
                "portal.test",
                &format!(
                    r#"nginx.ingress.kubernetes.io/auth-url: "{url}", nginx.ingress.kubernetes.io/auth-signin: "https://login.test/start""#
                ),
            ),
            (
                "metadata",
                "meta.test",
                r#"nginx.ingress.kubernetes.io/auth-url: "http://169.254.169.254/latest/meta-data/""#,
            ),
        ],
    )
    .await;
    let mut client = gw.client();
    let get = |token: &'static str| {
        // Forged: the service's X-Auth-User, and the URI the auth service
        // decides by (oauth2-proxy's skip-auth routes).
        let mut headers = vec![
            ("X-Auth-User", "mallory"),
            ("X_Auth_User", "mallory"),
            ("X-Forwarded-Uri", "/public/x"),
        ];
        if !token.is_empty() {
            headers.push(("Authorization", token));
        }
        headers
    };

    // 2xx: proxied, with the service's X-Auth-User (never the client's).
    let r = client
        .request("GET", "shop.test", "/cart?item=1", &get("Bearer good"))
        .await
        .unwrap();
    assert_eq!(r.upstream(), Some("app"));
    let upstream_saw = r.seen();
    assert_eq!(upstream_saw["x-auth-user"], "alice");
    assert!(!upstream_saw.contains_key("x_auth_user"));
    assert!(!upstream_saw.contains_key("x-other"));
    let asked = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        asked.starts_with("GET /check?for=%2Fcart%3Fitem%3D1 HTTP/1.1"),
        "{asked}"
    );
    let asked = asked.to_ascii_lowercase();
    assert!(
        asked.contains("x-original-url: http://shop.test/cart?item=1"),
        "{asked}"
    );
    assert!(asked.contains("x-original-method: get"), "{asked}");
    assert!(asked.contains("x-forwarded-for: 127.0.0.1"), "{asked}");
    assert!(asked.contains("x-forwarded-uri: /cart?item=1"), "{asked}");
    assert!(!asked.contains("/public"), "{asked}");

    // 401 (with its challenge) and 403 are the client's answer.
    let before = app.requests().len();
    let r = client
        .request("GET", "shop.test", "/cart", &get(""))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"shop\"");
    let r = client
        .request("GET", "shop.test", "/cart", &get("Bearer forbidden"))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // Anything else from the service, or no answer in 5 s: 500.
    let r = client
        .request("GET", "shop.test", "/cart", &get("Bearer broken"))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    let started = std::time::Instant::now();
    let r = client
        .request("GET", "shop.test", "/cart", &get("Bearer slow"))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
    assert!(started.elapsed() < std::time::Duration::from_secs(7));
    assert_eq!(
        app.requests().len(),
        before,
        "a refused request went upstream"
    );

    // auth-signin: a 401 sends the client to sign in, with where it was.
    let r = client
        .request("GET", "portal.test", "/home", &get(""))
        .await
        .unwrap();
    assert_eq!(r.status, 302);
    assert_eq!(
        r.headers["location"],
        "https://login.test/start?rd=http%3A%2F%2Fportal.test%2Fhome"
    );

    // A link-local auth URL (cloud metadata) is never fetched.
    let r = client
        .request("GET", "meta.test", "/", &get("Bearer good"))
        .await
        .unwrap();
    assert_eq!(r.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rps_and_limit_connections_per_client_address() {
    let app = Upstream::start("app").await;
    let (gw, _dir) = gateway_with(
        "ingress-nginx-limits-per-client",
        &app,
        &[
            (
                "rate",
                "rate.test",
                r#"nginx.ingress.kubernetes.io/limit-rps: "2", nginx.ingress.kubernetes.io/limit-burst-multiplier: "3""#,
            ),
            ("conns", "conns.test", r#"nginx.ingress.kubernetes.io/limit-connections: "2""#),
            (
                "exempt",
                "exempt.test",
                r#"nginx.ingress.kubernetes.io/limit-rps: "1", nginx.ingress.kubernetes.io/limit-whitelist: "127.0.0.0/8""#,
            ),
        ],
    )
    .await;
    let mut client = gw.client();

    // 2/s with a burst of 6: of 20 requests at once, 7 pass (as nginx's
    // `burst=6 nodelay`), a refill or two more if they take a while.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = client.get("rate.test", "/").await.unwrap();
        if r.status == 503 {
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!((7..=9).contains(&passed), "{statuses:?}");
    assert_eq!(passed + statuses.iter().filter(|s| **s == 503).count(), 20);
    // A config change keeps the counts: after another Ingress goes live,
    // the address has only what its rate refilled meanwhile.
    std::fs::write(
        _dir.0.join("other.yaml"),
        ingress("other", "app", "", "2024-01-01T00:00:00Z").replace("shop.test", "other.test"),
    )
    .unwrap();
    eventually(std::time::Duration::from_secs(5), || async {
        let r = gw.client().get("other.test", "/").await;
        r.is_ok_and(|r| r.status == 200)
    })
    .await
    .expect("the change went live");
    let mut after = 0;
    for _ in 0..6 {
        after += usize::from(client.get("rate.test", "/").await.unwrap().status == 200);
    }
    assert!(after <= 3, "{after} of 6 passed: the counts started again");
    // Exempt addresses are never limited.
    for _ in 0..20 {
        assert_eq!(client.get("exempt.test", "/").await.unwrap().status, 200);
    }

    // Two requests in flight from this address: a third is refused, and
    // served again once they are done.
    let slow = || {
        let mut c = gw.client();
        tokio::spawn(async move { c.get("conns.test", "/slow?delay=1s").await.unwrap().status })
    };
    let (a, b) = (slow(), slow());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(client.get("conns.test", "/").await.unwrap().status, 503);
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (200, 200));
    assert_eq!(client.get("conns.test", "/").await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_cookie_pins_a_client_and_repins_it_when_its_endpoint_goes() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let mut manifests = vec![
        "apiVersion: v1\nkind: Service\nmetadata: {name: sticky, namespace: saas}\nspec: {ports: [{port: 80}]}\n".to_string(),
        ingress(
            "sticky",
            "sticky",
            r#"nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-name: route, nginx.ingress.kubernetes.io/session-cookie-max-age: "3600""#,
            "2024-01-01T00:00:00Z",
        ),
    ];
    for up in &ups {
        manifests.push(format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: sticky-{}, namespace: saas, labels: {{kubernetes.io/service-name: sticky}}}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
            up.name,
            up.addr.port()
        ));
    }
    let (gw, _dir) = serve("ingress-nginx-affinity", manifests).await;
    let mut client = gw.client();

    // No cookie: balanced, and pinned to whoever answered.
    let r = client.get("shop.test", "/").await.unwrap();
    let first = r.upstream().unwrap().to_string();
    let set = r.headers["set-cookie"].clone();
    assert!(set.starts_with("route="), "{set}");
    assert!(set.contains("; Path=/; HttpOnly; Max-Age=3600"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(
        !cookie.contains("127.0.0.1"),
        "the cookie shows the address: {cookie}"
    );
    // With it: always the same endpoint, and no new cookie.
    for _ in 0..20 {
        let r = client
            .request("GET", "shop.test", "/", &[("Cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(r.upstream(), Some(first.as_str()));
        assert!(!r.headers.contains_key("set-cookie"));
    }
    // Without it, requests spread.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(
            client
                .get("shop.test", "/")
                .await
                .unwrap()
                .upstream()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // Its endpoint goes: served elsewhere at once, and pinned there. (A
    // moment for the pooled connections to it to be seen closed.)
    ups.iter().find(|u| u.name == first).unwrap().kill();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = client
        .request("GET", "shop.test", "/", &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let second = r.upstream().unwrap().to_string();
    assert_ne!(second, first);
    let repinned = r.headers["set-cookie"]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(repinned, cookie);
    for _ in 0..10 {
        let r = client
            .request("GET", "shop.test", "/", &[("Cookie", &repinned)])
            .await
            .unwrap();
        assert_eq!(r.upstream(), Some(second.as_str()));
    }
    // A cookie naming no endpoint: balanced and pinned.
    let r = client
        .request(
            "GET",
            "shop.test",
            "/",
            &[("Cookie", "route=0123456789abcdef")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"].starts_with("route="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_header_or_cookie_is_no_way_around_the_primarys_rules() {
    let web = Upstream::start("web").await;
    let canary = Upstream::start("web-canary").await;
    let (gw, _dir) = serve(
        "ingress-nginx-canary-rules",
        vec![
            service("web", &web),
            service("web-canary", &canary),
            ingress(
                "shop",
                "web",
                r#"nginx.ingress.kubernetes.io/whitelist-source-range: "10.0.0.0/8""#,
                "2024-01-01T00:00:00Z",
            ),
            ingress(
                "shop-canary",
                "web-canary",
                r#"nginx.ingress.kubernetes.io/canary: "true", nginx.ingress.kubernetes.io/canary-by-header: X-Canary, nginx.ingress.kubernetes.io/canary-by-cookie: beta"#,
                "2024-01-01T00:00:00Z",
            ),
        ],
    )
    .await;
    let mut client = gw.client();
    // The tests connect from 127.0.0.1, outside the primary's allowlist.
    for headers in [
        vec![],
        vec![("X-Canary", "always")],
        vec![("X-Canary", "never")],
        vec![("Cookie", "beta=always")],
        vec![("Cookie", "beta=never")],
    ] {
        let r = client
            .request("GET", "shop.test", "/", &headers)
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{headers:?}");
    }
    assert!(web.requests().is_empty() && canary.requests().is_empty());
}
