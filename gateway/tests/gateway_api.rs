//! The Gateway API conformance cases through real sockets: each test loads
//! the suite's base (our GatewayClass, the infra Gateways, the backend
//! Services) and one case's manifests, copied verbatim from
//! kubernetes-sigs/gateway-api `conformance/tests/httproute-*.yaml` into
//! `config/tests/testdata`, into a `--manifests` gateway whose backends are
//! real upstreams on loopback, and sends the requests the case's `.go` file
//! sends, expecting what it expects. Test names are the upstream cases'.
#![allow(clippy::unwrap_used)]

mod common;
mod pebble;
mod pki;

use std::path::Path;
use std::time::Duration;

use common::*;

/// Backends of the conformance base, in its order.
const BACKENDS: [&str; 4] = [
    "infra-backend-v1",
    "infra-backend-v2",
    "infra-backend-v3",
    "web-backend",
];

/// A gateway serving the conformance base and one case.
struct Case {
    ups: Vec<Upstream>,
    gw: Gateway,
    _dir: TempDir,
}

fn testdata(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/testdata");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

impl Case {
    async fn start(case: &str) -> Case {
        Case::start_with(case, "").await
    }

    /// The case, and `extra` manifests next to it.
    async fn start_with(case: &str, extra: &str) -> Case {
        let mut ups = Vec::new();
        for name in BACKENDS {
            ups.push(Upstream::start(name).await);
        }
        // The base's endpoints (10.0.N.1:3000) become the upstreams.
        let mut base = testdata("bases/gateway-api.yaml");
        for (i, up) in ups.iter().enumerate() {
            let from = format!(
                "ports: [{{port: 3000}}]\nendpoints: [{{addresses: [10.0.{}.1]}}]",
                i + 1
            );
            let to = format!(
                "ports: [{{port: {}}}]\nendpoints: [{{addresses: [{}]}}]",
                up.addr.port(),
                up.addr.ip()
            );
            assert!(base.contains(&from), "base changed: {from}");
            base = base.replace(&from, &to);
        }
        let file = std::fs::read_dir(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/tests/testdata"),
        )
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(&format!("-httproute-{case}.in.yaml")))
        .unwrap_or_else(|| panic!("no testdata for {case}"));
        let dir = TempDir::new(&format!("gwapi-{case}"));
        std::fs::write(dir.0.join("base.yaml"), base).unwrap();
        std::fs::write(dir.0.join("case.yaml"), testdata(&file)).unwrap();
        std::fs::write(dir.0.join("extra.yaml"), extra).unwrap();
        let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], &[]).await;
        Case { ups, gw, _dir: dir }
    }

    async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut c = self.gw.client();
        c.request(method, host, path, headers).await.unwrap()
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send("GET", "example.com", path, headers).await
    }

    /// Every request goes to `backend` (`Some`), or gets `status`.
    async fn expect(&self, requests: &[Expected]) {
        for (method, path, headers, want) in requests {
            let r = self.send(method, "example.com", path, headers).await;
            match want {
                Want::Backend(b) => assert_eq!(
                    (r.status, r.upstream()),
                    (200, Some(*b)),
                    "{method} {path} {headers:?}: {}",
                    r.body
                ),
                Want::Status(s) => assert_eq!(
                    (r.status, r.upstream()),
                    (*s, None),
                    "{method} {path} {headers:?}"
                ),
            }
        }
    }

    fn upstream(&self, name: &str) -> &Upstream {
        self.ups.iter().find(|u| u.name == name).unwrap()
    }
}

/// A request (method, path, headers) and what it must get.
type Expected = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Want,
);

enum Want {
    Backend(&'static str),
    Status(u16),
}

use Want::{Backend as B, Status as S};
const V1: Want = B("infra-backend-v1");
const V2: Want = B("infra-backend-v2");
const V3: Want = B("infra-backend-v3");
const NO: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching() {
    let c = Case::start("matching").await;
    c.expect(&[
        ("GET", "/", NO, V1),
        ("GET", "/example", NO, V1),
        ("GET", "/", &[("Version", "one")], V1),
        ("GET", "/v2", NO, V2),
        ("GET", "/v2/example", NO, V2),
        ("GET", "/", &[("Version", "two")], V2),
        ("GET", "/v2/", NO, V2),
        ("GET", "/v2example", NO, V1),
        ("GET", "/foo/v2/example", NO, V1),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching_across_routes() {
    let c = Case::start("matching-across-routes").await;
    let host = |h: &'static str,
                path: &'static str,
                headers: &'static [(&'static str, &'static str)]| (h, path, headers);
    for (h, path, headers, want) in [
        (host("example.com", "/", NO), "infra-backend-v1"),
        (host("example.com", "/example", NO), "infra-backend-v1"),
        (host("example.net", "/example", NO), "infra-backend-v1"),
        (
            host("example.com", "/example", &[("Version", "one")]),
            "infra-backend-v1",
        ),
        (host("example.com", "/v2", NO), "infra-backend-v2"),
        (host("example.net", "/v2", NO), "infra-backend-v1"),
        (host("example.com", "/v2/example", NO), "infra-backend-v2"),
        (
            host("example.com", "/", &[("Version", "two")]),
            "infra-backend-v2",
        ),
        // Part 2's header match is for example.com only.
        (
            host("example.net", "/", &[("Version", "two")]),
            "infra-backend-v1",
        ),
    ]
    .map(|((h, p, hd), w)| (h, p, hd, w))
    {
        let r = c.send("GET", h, path, headers).await;
        assert_eq!(
            r.upstream(),
            Some(want),
            "{h}{path} {headers:?}: {} {}",
            r.status,
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_path_match_order() {
    let c = Case::start("path-match-order").await;
    c.expect(&[
        ("GET", "/match/exact/one", NO, V3),
        ("GET", "/match/exact", NO, V2),
        ("GET", "/match", NO, V1),
        ("GET", "/match/prefix/one/any", NO, V2),
        ("GET", "/match/prefix/any", NO, V1),
        ("GET", "/match/any", NO, V3),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_header_matching() {
    let c = Case::start("header-matching").await;
    c.expect(&[
        ("GET", "/", &[("Version", "one")], V1),
        ("GET", "/", &[("Version", "two")], V2),
        ("GET", "/", &[("Version", "two"), ("Color", "orange")], V1),
        ("GET", "/", &[("Version", "two"), ("Color", "blue")], V2),
        ("GET", "/", &[("Color", "orange")], S(404)),
        ("GET", "/", &[("Some-Other-Header", "one")], S(404)),
        ("GET", "/", &[("Color", "blue")], V1),
        ("GET", "/", &[("Color", "green")], V1),
        ("GET", "/", &[("Color", "red")], V2),
        ("GET", "/", &[("Color", "yellow")], V2),
        ("GET", "/", &[("Color", "purple")], S(404)),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_query_param_matching() {
    let c = Case::start("query-param-matching").await;
    c.expect(&[
        ("GET", "/?animal=whale", NO, V1),
        ("GET", "/?animal=dolphin", NO, V2),
        ("GET", "/?animal=dolphin&color=blue", NO, V3),
        ("GET", "/?ANIMAL=Whale", NO, V3),
        ("GET", "/?animal=whale&otherparam=irrelevant", NO, V1),
        ("GET", "/?animal=dolphin&color=yellow", NO, V2),
        ("GET", "/?color=blue", NO, S(404)),
        ("GET", "/?animal=dog", NO, S(404)),
        ("GET", "/?animal=whaledolphin", NO, S(404)),
        ("GET", "/", NO, S(404)),
        ("GET", "/path1?animal=whale", NO, V1),
        ("GET", "/?animal=whale", &[("version", "one")], V2),
        ("GET", "/path2?animal=whale", &[("version", "two")], V3),
        ("GET", "/path3?animal=shark", NO, V1),
        ("GET", "/path4?animal=kraken", &[("version", "three")], V1),
        ("GET", "/?animal=shark", NO, S(404)),
        ("GET", "/path4?animal=kraken", NO, S(404)),
        ("GET", "/path5?animal=hydra", NO, V1),
        ("GET", "/?animal=hydra", &[("version", "four")], V3),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_method_matching() {
    let c = Case::start("method-matching").await;
    // (HEAD -> 404 is left out: this client reads a body after any head.)
    c.expect(&[
        ("POST", "/", NO, V1),
        ("GET", "/", NO, V2),
        ("GET", "/path1", NO, V1),
        ("PUT", "/", &[("version", "one")], V2),
        ("POST", "/path2", &[("version", "two")], V3),
        ("PATCH", "/path3", NO, V1),
        ("DELETE", "/path4", &[("version", "three")], V1),
        ("PUT", "/", NO, S(404)),
        ("DELETE", "/path4", NO, S(404)),
        ("PATCH", "/path5", NO, V1),
        ("PATCH", "/", &[("version", "four")], V2),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier() {
    let c = Case::start("request-header-modifier").await;
    let seen = |r: &Response, k: &str| r.seen().get(k).cloned();
    let r = c
        .get(
            "/set",
            &[
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "some-other-value"),
            ],
        )
        .await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    assert_eq!(
        seen(&r, "x-header-set").as_deref(),
        Some("set-overwrites-values")
    );
    assert_eq!(seen(&r, "some-other-header").as_deref(), Some("val"));
    let r = c.get("/add", &[("X-Header-Add", "some-other-value")]).await;
    assert_eq!(
        seen(&r, "x-header-add").as_deref(),
        Some("some-other-value, add-appends-values")
    );
    let r = c.get("/add", NO).await;
    assert_eq!(
        seen(&r, "x-header-add").as_deref(),
        Some("add-appends-values")
    );
    let r = c.get("/remove", &[("X-Header-Remove", "val")]).await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    assert_eq!(seen(&r, "x-header-remove"), None);
    // A route's edits never forge the forwarding headers.
    let r = c.get("/multiple", &[("X-Header-Remove-2", "x")]).await;
    assert_eq!(seen(&r, "x-header-remove-2"), None, "{:?}", r.seen());
    assert_eq!(seen(&r, "x-forwarded-proto").as_deref(), Some("http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_response_header_modifier() {
    let c = Case::start("response-header-modifier").await;
    let r = c.get("/set", NO).await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    assert_eq!(
        r.headers.get("x-header-set").map(String::as_str),
        Some("set-overwrites-values")
    );
    let r = c.get("/add", NO).await;
    assert_eq!(
        r.headers.get("x-header-add").map(String::as_str),
        Some("add-appends-values")
    );
    let r = c.get("/multiple", NO).await;
    for (k, v) in [
        ("x-header-set-1", "header-set-1"),
        ("x-header-set-2", "header-set-2"),
        ("x-header-add-1", "header-add-1"),
        ("x-header-add-3", "header-add-3"),
    ] {
        assert_eq!(
            r.headers.get(k).map(String::as_str),
            Some(v),
            "{:?}",
            r.headers
        );
    }
}

/// Each (host, path) is answered with (status, Location).
async fn expect_redirects(c: &Case, cases: &[(&str, &str, u16, &str)]) {
    for (host, path, status, location) in cases {
        assert_eq!(
            redirect(c, host, path, *status).await,
            *location,
            "{host}{path}"
        );
    }
}

/// The `Location` of a redirect answer with `status`.
async fn redirect(c: &Case, host: &str, path: &str, status: u16) -> String {
    let r = c.send("GET", host, path, NO).await;
    assert_eq!(
        (r.status, r.upstream()),
        (status, None),
        "{path}: {}",
        r.body
    );
    r.headers.get("location").cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_host_and_status() {
    let c = Case::start("redirect-host-and-status").await;
    expect_redirects(
        &c,
        &[
            (
                "gw.test",
                "/hostname-redirect",
                302,
                "http://example.org/hostname-redirect",
            ),
            (
                "gw.test",
                "/host-and-status",
                301,
                "http://example.org/host-and-status",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_path() {
    let c = Case::start("redirect-path").await;
    expect_redirects(
        &c,
        &[
            (
                "gw.test",
                "/original-prefix/lemon",
                302,
                "http://gw.test/replacement-prefix/lemon",
            ),
            (
                "gw.test",
                "/full/path/original",
                302,
                "http://gw.test/full-path-replacement",
            ),
            (
                "gw.test",
                "/path-and-host",
                302,
                "http://example.org/replacement-prefix",
            ),
            (
                "gw.test",
                "/path-and-status",
                301,
                "http://gw.test/replacement-prefix",
            ),
            (
                "gw.test",
                "/full-path-and-host",
                302,
                "http://example.org/replacement-full",
            ),
            (
                "gw.test",
                "/full-path-and-status",
                301,
                "http://gw.test/replacement-full",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_port() {
    let c = Case::start("redirect-port").await;
    expect_redirects(
        &c,
        &[
            ("gw.test", "/port", 302, "http://gw.test:8083/port"),
            (
                "gw.test",
                "/port-and-host",
                302,
                "http://example.org:8083/port-and-host",
            ),
            (
                "gw.test",
                "/port-and-status",
                301,
                "http://gw.test:8083/port-and-status",
            ),
            (
                "gw.test",
                "/port-and-host-and-status",
                302,
                "http://example.org:8083/port-and-host-and-status",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_scheme() {
    let c = Case::start("redirect-scheme").await;
    // A new scheme without a port goes to that scheme's port (left out),
    // whatever port the client used.
    expect_redirects(
        &c,
        &[
            ("gw.test:8080", "/scheme", 302, "https://gw.test/scheme"),
            (
                "gw.test",
                "/scheme-and-host",
                302,
                "https://example.org/scheme-and-host",
            ),
            (
                "gw.test",
                "/scheme-and-status",
                301,
                "https://gw.test/scheme-and-status",
            ),
            (
                "gw.test",
                "/scheme-and-host-and-status",
                302,
                "https://example.org/scheme-and-host-and-status",
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_host() {
    let c = Case::start("rewrite-host").await;
    let r = c.send("GET", "rewrite.example", "/one", NO).await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    assert_eq!(
        r.seen().get("host").map(String::as_str),
        Some("one.example.org")
    );
    // The client's authority is still what X-Forwarded-Host says.
    assert_eq!(
        r.seen().get("x-forwarded-host").map(String::as_str),
        Some("rewrite.example")
    );
    let r = c.send("GET", "rewrite.example", "/", NO).await;
    assert_eq!(r.upstream(), Some("infra-backend-v2"));
    assert_eq!(
        r.seen().get("host").map(String::as_str),
        Some("example.org")
    );
    let r = c
        .send(
            "GET",
            "rewrite.example",
            "/rewrite-host-and-modify-headers",
            &[("X-Header-Remove", "x")],
        )
        .await;
    assert_eq!(
        r.seen().get("host").map(String::as_str),
        Some("test.example.org")
    );
    assert_eq!(
        r.seen().get("x-header-set").map(String::as_str),
        Some("set-overwrites-values")
    );
    assert_eq!(r.seen().get("x-header-remove"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_path() {
    let c = Case::start("rewrite-path").await;
    for (path, forwarded) in [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
        ("/prefix/one/two?q=1", "/one/two?q=1"),
    ] {
        let r = c.get(path, NO).await;
        assert_eq!(r.upstream(), Some("infra-backend-v1"), "{path}");
        assert_eq!(
            r.headers.get("x-target").map(String::as_str),
            Some(forwarded),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_mirror() {
    let c = Case::start("request-mirror").await;
    let r = c.get("/mirror?x=1", NO).await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    let mirror = c.upstream("infra-backend-v2");
    let got = eventually(Duration::from_secs(5), || async {
        mirror.requests().contains(&"GET /mirror?x=1".to_string())
    })
    .await;
    let metrics = c.gw.admin_get("/metrics").await.body;
    let mirrored: Vec<&str> = metrics.lines().filter(|l| l.contains("mirror")).collect();
    assert!(
        got.is_some(),
        "mirror saw {:?}; {mirrored:?}",
        mirror.requests()
    );
    // Edits apply to the request and to its copy alike.
    let r = c
        .get("/mirror-and-modify-headers", &[("X-Header-Remove", "x")])
        .await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    assert_eq!(
        r.seen().get("x-header-set").map(String::as_str),
        Some("set-overwrites-values")
    );
    let got = eventually(Duration::from_secs(5), || async {
        mirror
            .requests()
            .iter()
            .any(|t| t == "GET /mirror-and-modify-headers")
    })
    .await;
    assert!(got.is_some(), "mirror saw {:?}", mirror.requests());
    assert!(
        c.gw.metrics_show("vestibule_mirror_requests_total{result=\"sent\"} 2")
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_disallowed_kind() {
    let c = Case::start("disallowed-kind").await;
    // The only route's parent admits TLSRoutes only: nothing is served.
    c.expect(&[("GET", "/", NO, S(404))]).await;
}

/// The upstreams that answered `n` requests to `path`, counted.
async fn spread(c: &Case, path: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let mut client = c.gw.client();
    for _ in 0..n {
        let r = client.get("example.com", path).await.unwrap();
        let key = r
            .upstream()
            .map_or_else(|| r.status.to_string(), str::to_string);
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_weight() {
    let c = Case::start("weight").await;
    let counts = spread(&c, "/", 500).await;
    let v1 = counts.get("infra-backend-v1").copied().unwrap_or(0);
    let v2 = counts.get("infra-backend-v2").copied().unwrap_or(0);
    // 70/30 of 500, within the suite's tolerance; weight 0 gets nothing.
    assert!(
        (325..=375).contains(&v1) && (125..=175).contains(&v2),
        "{counts:?}"
    );
    assert_eq!(v1 + v2, 500, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_nonexistent_backendref() {
    let c = Case::start("invalid-nonexistent-backendref").await;
    c.expect(&[("GET", "/", NO, S(500)), ("GET", "/any/path", NO, S(500))])
        .await;
}

/// The spec's rule for a partly invalid rule: the invalid backend's share
/// of the traffic gets 500s, the valid backends keep serving theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_partially_invalid_backend_refs_keep_their_share_as_500s() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: partly-invalid, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: same-namespace}]
  hostnames: [split.example]
  rules:
  - backendRefs:
    - {name: infra-backend-v1, port: 8080, weight: 1}
    - {name: nonexistent, port: 8080, weight: 1}
    - {name: infra-backend-v2, port: 8080, weight: 2}
"#;
    let c = Case::start_with("matching", route).await;
    let mut client = c.gw.client();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let r = client.get("split.example", "/").await.unwrap();
        let key = r
            .upstream()
            .map_or_else(|| r.status.to_string(), str::to_string);
        *counts.entry(key).or_insert(0) += 1;
    }
    // One in four is the invalid backend's: exactly, by the turn counter.
    assert_eq!(counts.get("500"), Some(&100), "{counts:?}");
    let served =
        counts.get("infra-backend-v1").unwrap_or(&0) + counts.get("infra-backend-v2").unwrap_or(&0);
    assert_eq!(served, 300, "{counts:?}");
    assert!(
        counts.get("infra-backend-v2") > counts.get("infra-backend-v1"),
        "{counts:?}"
    );
}

/// Requests to (host, path): the backend that must answer, or 404.
async fn expect_hosts(c: &Case, cases: &[(&str, &str, Option<&str>)]) {
    for (host, path, want) in cases {
        let r = c.send("GET", host, path, NO).await;
        match want {
            Some(b) => assert_eq!((r.status, r.upstream()), (200, Some(*b)), "{host}{path}"),
            None => assert_eq!((r.status, r.upstream()), (404, None), "{host}{path}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_hostname_matching() {
    let c = Case::start("listener-hostname-matching").await;
    let (v1, v2, v3) = (
        Some("infra-backend-v1"),
        Some("infra-backend-v2"),
        Some("infra-backend-v3"),
    );
    expect_hosts(
        &c,
        &[
            ("bar.com", "/", v1),
            ("foo.bar.com", "/", v2),
            ("baz.bar.com", "/", v3),
            ("boo.bar.com", "/", v3),
            // A wildcard listener covers names at any depth.
            ("multiple.prefixes.bar.com", "/", v3),
            ("multiple.prefixes.foo.com", "/", v3),
            ("foo.com", "/", None),
            ("no.matching.host", "/", None),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_hostname_intersection() {
    let c = Case::start("hostname-intersection").await;
    let (v1, v2, v3) = (
        Some("infra-backend-v1"),
        Some("infra-backend-v2"),
        Some("infra-backend-v3"),
    );
    expect_hosts(
        &c,
        &[
            ("very.specific.com", "/s1", v1),
            ("very.specific.com:1234", "/s1", v1),
            ("non.matching.com", "/s1", None),
            ("foo.nonmatchingwildcard.io", "/s1", None),
            ("foo.wildcard.io", "/s1", None),
            ("very.specific.com", "/non-matching-prefix", None),
            ("foo.wildcard.io", "/s2", v2),
            ("bar.wildcard.io", "/s2", v2),
            ("foo.bar.wildcard.io", "/s2", v2),
            ("non.matching.com", "/s2", None),
            ("wildcard.io", "/s2", None),
            ("very.specific.com", "/s2", None),
            ("very.specific.com", "/s3", v3),
            ("non.matching.com", "/s3", None),
            ("foo.specific.com", "/s3", None),
            ("foo.wildcard.io", "/s3", None),
            ("foo.anotherwildcard.io", "/s4", v1),
            ("anotherwildcard.io", "/s4", None),
            ("foo.wildcard.io", "/s4", None),
            ("specific.but.wrong.com", "/s5", None),
            ("first.com", "/", v2),
            ("sub.first.com", "/", v2),
            ("second.com", "/", v2),
            ("sub.second.com", "/", v2),
            ("third.com", "/", None),
            ("sub.third.com", "/", None),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_exact_path_matching() {
    let c = Case::start("exact-path-matching").await;
    c.expect(&[
        ("GET", "/one", NO, V1),
        ("GET", "/two", NO, V2),
        ("GET", "/", NO, S(404)),
        ("GET", "/one/example", NO, S(404)),
        ("GET", "/two/", NO, S(404)),
        ("GET", "/Two", NO, S(404)),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_simple_same_namespace() {
    let c = Case::start("simple-same-namespace").await;
    c.expect(&[("GET", "/", NO, V1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cross_namespace() {
    let c = Case::start("cross-namespace").await;
    c.expect(&[("GET", "/", NO, B("web-backend"))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_reference_grant() {
    let c = Case::start("reference-grant").await;
    c.expect(&[("GET", "/", NO, B("web-backend"))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_reference_grant() {
    // The grant does not cover the route: its only backend is unresolved.
    let c = Case::start("invalid-reference-grant").await;
    c.expect(&[("GET", "/", NO, S(500))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_https_listener() {
    // The suite's certificate Secret: one certificate for the listeners'
    // names, from a test CA the client trusts.
    let pki = pki::Pki::new();
    let cert = pki.issue(
        &["example.org", "second-example.org", "*.wildcard.org"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: tls-validity-checks-certificate, namespace: gateway-conformance-infra}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.cert_pem),
        indent(&cert.key_pem)
    );
    let c = Case::start_with("https-listener", &secret).await;
    let client = pebble::client(&[&pki.ca_pem]);
    for (host, want) in [
        ("example.org", "infra-backend-v1"),
        ("second-example.org", "infra-backend-v2"),
    ] {
        let r = pebble::https_get(c.gw.https, &client, host).await.unwrap();
        assert_eq!((r.status, r.upstream()), (200, Some(want)), "{host}");
        assert_eq!(
            r.seen().get("x-forwarded-proto").map(String::as_str),
            Some("https")
        );
    }
    // The routes attach to HTTPS listeners only: plain HTTP redirects.
    let r = c.send("GET", "example.org", "/x", NO).await;
    assert_eq!(r.status, 308);
    assert!(
        r.headers["location"].starts_with("https://example.org"),
        "{:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_303_307_308_redirects() {
    for (case, path, status) in [
        ("303-redirect", "/see-other", 303),
        ("307-redirect", "/temporary", 307),
        ("308-redirect", "/permanent", 308),
    ] {
        let c = Case::start(case).await;
        let location = redirect(&c, "gw.test", path, status).await;
        assert!(location.starts_with("http://"), "{case}: {location}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_multiple_mirrors() {
    let c = Case::start("request-multiple-mirrors").await;
    let r = c.get("/multi-mirror", NO).await;
    assert_eq!(r.upstream(), Some("infra-backend-v1"));
    for mirror in ["infra-backend-v2", "infra-backend-v3"] {
        let up = c.upstream(mirror);
        let got = eventually(Duration::from_secs(5), || async {
            up.requests().iter().any(|t| t == "GET /multi-mirror")
        })
        .await;
        assert!(got.is_some(), "{mirror} saw {:?}", up.requests());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_omitted_backendrefs() {
    let c = Case::start("omitted-backendrefs").await;
    c.expect(&[
        ("GET", "/forward", NO, V1),
        ("GET", "/omitted-no-forward", NO, S(500)),
        ("GET", "/empty-no-forward", NO, S(500)),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_request() {
    let c = Case::start("timeout-request").await;
    c.expect(&[
        ("GET", "/request-timeout", NO, V1),
        ("GET", "/request-timeout?delay=1s", NO, S(504)),
        ("GET", "/disable-request-timeout?delay=1s", NO, V1),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_backend_request() {
    let c = Case::start("timeout-backend-request").await;
    c.expect(&[
        ("GET", "/backend-timeout", NO, V1),
        ("GET", "/backend-timeout?delay=1s", NO, S(504)),
        ("GET", "/disable-backend-timeout?delay=1s", NO, V1),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_backendref_unknown_kind() {
    // (ResolvedRefs=False, InvalidKind: golden case 81.)
    let c = Case::start("invalid-backendref-unknown-kind").await;
    c.expect(&[("GET", "/v2", NO, S(500))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_backend_ref() {
    // (ResolvedRefs=False, RefNotPermitted: golden case 82.)
    let c = Case::start("invalid-cross-namespace-backend-ref").await;
    c.expect(&[("GET", "/", NO, S(500))]).await;
}
