//! The operator's subcommands, run as a user would: the real binary, real
//! files (and for `run`, the fake API server via KUBECONFIG), asserting on
//! stdout, stderr and exit codes.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vestibule-operator"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run vestibule-operator")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn translate_demo_names_tenants_certs_and_weighted_pool() {
    let out = operator(&["translate", "-f", "examples/demo", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json output");
    let config = &v["config"];
    let tenants = config["tenants"].as_object().expect("tenants");
    assert!(tenants.contains_key("acme") && tenants.contains_key("globex"));
    assert_eq!(config["certificates"].as_object().map(|c| c.len()), Some(2));
    // acme's 90/10 split over 2 stable endpoints and 1 canary.
    let eps = config["pools"]["tenant/acme"]["endpoints"]
        .as_array()
        .expect("pool");
    let weight = |port: &str| -> u64 {
        eps.iter()
            .filter(|e| e["address"].as_str().is_some_and(|a| a.ends_with(port)))
            .map(|e| e["weight"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        (weight(":9101") + weight(":9102")) * 10,
        weight(":9103") * 90
    );
    // The hijack attempt is reported, and no route serves it.
    let text = stdout(&out);
    assert!(text.contains("HostNotAllowed"), "{text}");
    assert!(!text.contains("login.acme.example.com\""));
    // Keys are redacted unless asked for.
    assert!(!text.contains("PRIVATE KEY"));
    assert!(text.contains("<redacted>"));
}

#[test]
fn translate_can_emit_a_config_the_gateway_loads() {
    let out = operator(&[
        "translate",
        "-f",
        "examples/demo",
        "--config-only",
        "--include-keys",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config =
        vestibule_config::GatewayConfig::from_text(&stdout(&out)).expect("loadable config");
    assert!(!config.version.is_empty());
    assert_eq!(config.version, config.content_version());
}

#[test]
fn translate_missing_path_exits_2_with_a_clear_message() {
    let out = operator(&["translate", "-f", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does/not/exist.yaml: no such file or directory"));
}

#[test]
fn translate_broken_document_names_file_and_index_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("vestibule-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\n---\nkind: [oops\n",
    )
    .expect("write");
    let out = operator(&["translate", "-f", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("broken.yaml: document 2:"),
        "{}",
        stderr(&out)
    );
    // What could be read is still translated and printed.
    assert!(stdout(&out).contains("version:"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn run_help_says_when_the_config_server_is_https() {
    let out = operator(&["run", "--help"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in [
        "--ingress-class",
        "--watch-namespace",
        "--require-tenant",
        "--listen",
        "--token-file",
        "--tls-cert",
        "--tls-key",
        "--publish-service",
        "--metrics",
        "--lease-namespace",
        "--lease-name",
        "--identity",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
    assert!(
        help.contains("plain HTTP only with --insecure-listen"),
        "{help}"
    );
}

#[test]
fn run_usage_errors_exit_2() {
    // No token file at all.
    let out = Command::new(env!("CARGO_BIN_EXE_vestibule-operator"))
        .arg("run")
        .env_remove("VESTIBULE_TOKEN_FILE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A token file that does not exist: named, before any cluster access.
    let out = operator(&["run", "--token-file", "/does/not/exist"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("/does/not/exist"), "{}", stderr(&out));
    // A certificate without its key.
    let out = operator(&["run", "--token-file", "x", "--tls-cert", "c.pem"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A malformed --publish-service.
    let out = operator(&["run", "--token-file", "x", "--publish-service", "noslash"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn run_refuses_plain_http_unless_told() {
    let dir = support::temp_dir("insecure");
    let token = dir.join("token");
    std::fs::write(&token, support::TOKEN).expect("token");
    let token = token.to_str().expect("utf-8");
    // No --tls-cert: refused before anything listens, saying why.
    let out = operator(&["run", "--token-file", token]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--insecure-listen"),
        "{}",
        stderr(&out)
    );
    // --insecure-listen and a certificate contradict each other.
    let out = operator(&[
        "run",
        "--token-file",
        token,
        "--insecure-listen",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_configs_from_kubeconfig_and_stops_cleanly_on_sigterm() {
    let api = support::FakeApi::start().await;
    api.apply(support::ingress_class());
    api.apply(support::service("shop", "web", 80));
    api.apply(support::endpoint_slice("shop", "web", &["10.0.0.1"], 8080));
    api.apply(support::ingress(
        "shop",
        "shop",
        "shop.example.com",
        "web",
        80,
    ));
    let dir = support::temp_dir("cli");
    let kubeconfig = api.kubeconfig(&dir);
    let token = dir.join("token");
    std::fs::write(&token, support::TOKEN).expect("token");
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vestibule-operator"))
        .args(["run", "--identity", "bin", "--lease-namespace", "vestibule"])
        .arg("--insecure-listen")
        .args([
            "--listen",
            &listen.to_string(),
            "--metrics",
            &metrics.to_string(),
        ])
        .arg("--token-file")
        .arg(&token)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");

    support::eventually(Duration::from_secs(10), "readiness", || async {
        let ok = tokio::net::TcpStream::connect(metrics).await.is_ok();
        if !ok {
            return None;
        }
        (support::get(metrics, "/readyz", &[]).await.status == http::StatusCode::OK).then_some(())
    })
    .await;
    let res = support::get_config(listen, None).await;
    assert_eq!(res.status, http::StatusCode::OK);
    assert_eq!(support::hosts(&res.json()), vec!["shop.example.com"]);
    support::eventually(Duration::from_secs(5), "leadership", || async {
        let lease = api.get("Lease", Some("vestibule"), "vestibule-operator")?;
        (lease["spec"]["holderIdentity"] == "bin").then_some(())
    })
    .await;

    let pid = child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // It released the Lease on the way out.
    let lease = api
        .get("Lease", Some("vestibule"), "vestibule-operator")
        .expect("lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The API server only accepts structural schemas: every node typed (or
/// int-or-string), no $ref; anyOf/oneOf/allOf only as value validations
/// (members that declare no type or shape of their own) on a typed node.
fn assert_structural(node: &serde_json::Value, path: &str) {
    let obj = node
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not an object"));
    assert!(!obj.contains_key("$ref"), "{path}: $ref is not allowed");
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&serde_json::Value::Bool(true));
    assert!(typed, "{path}: schema node has no type");
    for key in ["anyOf", "oneOf", "allOf"] {
        let Some(members) = obj.get(key) else {
            continue;
        };
        if obj.contains_key("x-kubernetes-int-or-string") {
            continue;
        }
        assert!(
            obj.contains_key("type"),
            "{path}: {key} needs a type of its own"
        );
        for m in members.as_array().expect("members") {
            let m = m.as_object().expect("member");
            for shape in ["type", "properties", "items", "additionalProperties"] {
                assert!(
                    !m.contains_key(shape),
                    "{path}: {key} member declares {shape}"
                );
            }
        }
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        assert_eq!(
            obj.get("type").and_then(|t| t.as_str()),
            Some("object"),
            "{path}"
        );
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
}

#[test]
fn crd_is_cluster_scoped_structural_and_has_status_subresource() {
    let out = operator(&["crd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let crd: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).expect("yaml");
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "tenants.vestibule.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let schema = &version["schema"]["openAPIV3Schema"];
    assert_structural(schema, "openAPIV3Schema");
    let spec = &schema["properties"]["spec"]["properties"];
    for field in ["domains", "namespaces", "backend", "tls", "rateLimit"] {
        assert!(spec[field].is_object(), "spec.{field} missing");
    }
    assert_eq!(
        spec["backend"]["properties"]["services"]["items"]["properties"]["port"]
            ["x-kubernetes-int-or-string"],
        true
    );
    // tls is one of secretRef or acme.
    let tls = &spec["tls"];
    assert_eq!(tls["oneOf"][0]["required"][0], "secretRef");
    assert_eq!(tls["oneOf"][1]["required"][0], "acme");

    let out = operator(&["crd", "acmeissuer"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let crd: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).expect("yaml");
    assert_eq!(crd["metadata"]["name"], "acmeissuers.vestibule.dev");
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let version = &crd["spec"]["versions"][0];
    assert!(version["subresources"]["status"].is_object());
    let schema = &version["schema"]["openAPIV3Schema"];
    assert_structural(schema, "openAPIV3Schema");
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"][0], "directoryUrl");
    assert_eq!(
        spec["properties"]["challenge"]["enum"],
        serde_json::json!(["HTTP-01", "TLS-ALPN-01"])
    );
}

#[test]
fn tenant_typos_are_errors_naming_the_object_and_the_field() {
    let dir = support::temp_dir("typo");
    let file = dir.join("tenant.yaml");
    std::fs::write(
        &file,
        "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
         spec:\n  domains: [acme.example.com]\n  rateLimt: {requestsPerSecond: 5, burst: 10}\n\
         ---\n\
         apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: globex}\n\
         spec: {domains: [globex.example.com]}\n",
    )
    .expect("write");
    let out = operator(&["translate", "-f", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("tenant.yaml: document 1: Tenant \"acme\": unknown field `rateLimt`"),
        "{err}"
    );
    // The bad Tenant is skipped; the rest of the file still translates.
    let v: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).expect("yaml");
    let tenants = v["config"]["tenants"].as_object().expect("tenants");
    assert_eq!(tenants.keys().collect::<Vec<_>>(), ["globex"], "{v}");
    // Nested types too.
    std::fs::write(
        &file,
        "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
         spec:\n  domains: [acme.example.com]\n  tls: {secretRef: {namespace: a, name: b, nmae: c}}\n",
    )
    .expect("write");
    let out = operator(&["translate", "-f", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nmae"), "{}", stderr(&out));
    // The CRD keeps nothing it does not know: no field preserves unknowns.
    let crd = stdout(&operator(&["crd"]));
    assert!(
        !crd.contains("x-kubernetes-preserve-unknown-fields"),
        "{crd}"
    );
}

#[test]
fn translate_ingress_class_narrows_as_run_does() {
    let dir = support::temp_dir("class");
    let file = dir.join("classes.yaml");
    let class = |name: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: {name}}}\n\
             spec: {{controller: vestibule.dev/ingress-controller}}\n---\n"
        )
    };
    let ingress = |name: &str, class: &str, host: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: a}}\n\
             spec:\n  ingressClassName: {class}\n  rules:\n  - host: {host}\n    http:\n      paths:\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: s, port: {{number: 80}}}}}}}}\n---\n"
        )
    };
    let text = [
        class("vestibule"),
        class("internal"),
        ingress("public", "vestibule", "public.test"),
        ingress("private", "internal", "private.test"),
    ]
    .concat();
    std::fs::write(&file, text).expect("write");
    let hosts = |args: &[&str]| -> Vec<String> {
        let path = file.to_str().expect("utf-8");
        let mut all = vec!["translate", "-f", path, "-o", "json", "--config-only"];
        all.extend_from_slice(args);
        let out = operator(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["host"].as_str().expect("host").to_string())
            .collect()
    };
    assert_eq!(hosts(&[]), ["private.test", "public.test"]);
    assert_eq!(hosts(&["--ingress-class", "vestibule"]), ["public.test"]);
    assert_eq!(hosts(&["--ingress-class", "internal"]), ["private.test"]);
    // A controller name selects by controller, as `run` does.
    assert_eq!(
        hosts(&["--ingress-class", "vestibule.dev/ingress-controller"]),
        ["private.test", "public.test"]
    );
}

#[test]
fn migrate_reports_each_annotation_and_exits_3_unless_all_are_supported() {
    let file =
        repo_root().join("config/tests/testdata/83-ingress-nginx-canary-and-annotations.in.yaml");
    let o = operator(&["migrate", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let table = stdout(&o);
    let line = |needle: &str| {
        table
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("configuration-snippet").contains("refused"), "{table}");
    assert!(line("server-alias").contains("unsupported"), "{table}");
    assert!(line("canary-weight").contains("supported"), "{table}");

    let o = operator(&["migrate", "-f", file.to_str().unwrap(), "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json[0]["ingress"], "shop/shop");
    assert_eq!(json[0]["annotations"][0]["support"], "refused");

    // Only supported annotations (or none): 0.
    let dir = std::env::temp_dir().join(format!("vestibule-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = dir.join("ok.yaml");
    std::fs::write(
        &ok,
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: c\n  namespace: shop\n  annotations: {nginx.ingress.kubernetes.io/canary: \"true\"}\nspec: {}\n",
    )
    .unwrap();
    assert_eq!(
        operator(&["migrate", "-f", ok.to_str().unwrap()])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(
        operator(&["migrate", "-f", "/no/such/file"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
