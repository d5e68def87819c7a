//! An in-memory Kubernetes API server for tests: enough of list, watch,
//! get, create, replace, merge-patch (main resource and `/status`) and
//! delete for the kinds the operator uses, with resourceVersions, optimistic
//! concurrency (409), field and label selectors, and streaming watches.
//! Every request is recorded so tests can count writes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

/// The resources the fake knows: (plural, apiVersion, kind, namespaced, has /status).
const RESOURCES: &[(&str, &str, &str, bool, bool)] = &[
    ("services", "v1", "Service", true, true),
    ("secrets", "v1", "Secret", true, false),
    ("configmaps", "v1", "ConfigMap", true, false),
    ("namespaces", "v1", "Namespace", false, false),
    (
        "endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
        true,
        false,
    ),
    ("ingresses", "networking.k8s.io/v1", "Ingress", true, true),
    (
        "ingressclasses",
        "networking.k8s.io/v1",
        "IngressClass",
        false,
        false,
    ),
    ("tenants", "vestibule.dev/v1alpha1", "Tenant", false, true),
    (
        "acmeissuers",
        "vestibule.dev/v1alpha1",
        "AcmeIssuer",
        false,
        true,
    ),
    (
        "gatewayclasses",
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        false,
        true,
    ),
    (
        "gateways",
        "gateway.networking.k8s.io/v1",
        "Gateway",
        true,
        true,
    ),
    (
        "httproutes",
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        true,
        true,
    ),
    (
        "referencegrants",
        "gateway.networking.k8s.io/v1beta1",
        "ReferenceGrant",
        true,
        false,
    ),
    ("leases", "coordination.k8s.io/v1", "Lease", true, false),
    ("events", "events.k8s.io/v1", "Event", true, false),
];

#[derive(Clone, Copy, Debug)]
struct Kind {
    plural: &'static str,
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
    has_status: bool,
}

fn kind_by_plural(plural: &str) -> Option<Kind> {
    RESOURCES.iter().find(|r| r.0 == plural).map(|r| Kind {
        plural: r.0,
        api_version: r.1,
        kind: r.2,
        namespaced: r.3,
        has_status: r.4,
    })
}

fn kind_by_kind(kind: &str) -> Option<Kind> {
    RESOURCES
        .iter()
        .find(|r| r.2 == kind)
        .and_then(|r| kind_by_plural(r.0))
}

/// (plural, namespace or "", name)
type Key = (String, String, String);

#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
}

struct LogEntry {
    rv: u64,
    plural: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<LogEntry>,
    requests: Vec<Recorded>,
    /// Status patches answered 500 while this many remain.
    failing_status_patches: usize,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    notify: Arc<watch::Sender<u64>>,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake api");
        let addr = listener.local_addr().expect("addr");
        let (notify, _) = watch::channel(0);
        let api = FakeApi {
            addr,
            state: Arc::new(Mutex::new(State::default())),
            notify: Arc::new(notify),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        api
    }

    /// A real kube client pointed at this server (plain HTTP, no auth).
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("url");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(300));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kubeconfig file naming this server, for running the binary.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // === test helpers ===

    /// Creates or replaces an object, as `kubectl apply` would (status kept
    /// unless given, generation bumped on spec changes).
    pub fn apply(&self, mut obj: Value) -> Value {
        let kind = obj["kind"]
            .as_str()
            .and_then(kind_by_kind)
            .expect("known kind");
        let ns = if kind.namespaced {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = obj["metadata"]["name"].as_str().expect("name").to_string();
        let key = (kind.plural.to_string(), ns.clone(), name);
        let mut state = self.lock();
        let existing = state.objects.get(&key).cloned();
        if kind.namespaced {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let out = match existing {
            None => self.commit_create(&mut state, kind, key, obj),
            Some(old) => {
                if obj.get("status").is_none() {
                    if let Some(s) = old.get("status") {
                        obj["status"] = s.clone();
                    }
                }
                self.commit_update(&mut state, kind, key, old, obj)
            }
        };
        drop(state);
        out
    }

    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let kind = kind_by_kind(kind).expect("known kind");
        let key = (
            kind.plural.to_string(),
            namespace.unwrap_or("").to_string(),
            name.to_string(),
        );
        let mut state = self.lock();
        self.commit_delete(&mut state, kind, &key);
    }

    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let kind = kind_by_kind(kind).expect("known kind");
        let key = (
            kind.plural.to_string(),
            namespace.unwrap_or("").to_string(),
            name.to_string(),
        );
        self.lock().objects.get(&key).cloned()
    }

    pub fn list(&self, kind: &str) -> Vec<Value> {
        let plural = kind_by_kind(kind).expect("known kind").plural;
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.0 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests with this method whose path contains `needle`.
    pub fn count(&self, method: Method, needle: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(needle))
            .count()
    }

    // === commits ===

    fn bump(&self, state: &mut State) -> u64 {
        state.rv += 1;
        state.rv
    }

    fn commit_create(&self, state: &mut State, kind: Kind, key: Key, mut obj: Value) -> Value {
        let rv = self.bump(state);
        state.uid += 1;
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("uid".into(), json!(format!("uid-{}", state.uid)));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        obj["apiVersion"] = json!(kind.api_version);
        obj["kind"] = json!(kind.kind);
        state.objects.insert(key.clone(), obj.clone());
        self.log(state, rv, &key, "ADDED", obj.clone());
        obj
    }

    /// Stores `new` over `old`; a no-op change keeps the resourceVersion and
    /// sends no watch event, as the real API server does.
    fn commit_update(
        &self,
        state: &mut State,
        kind: Kind,
        key: Key,
        old: Value,
        mut new: Value,
    ) -> Value {
        for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            if let Some(v) = old["metadata"].get(field) {
                new["metadata"][field] = v.clone();
            }
        }
        new["apiVersion"] = json!(kind.api_version);
        new["kind"] = json!(kind.kind);
        if new == old {
            return old;
        }
        let spec_changed =
            strip(&old, &["metadata", "status"]) != strip(&new, &["metadata", "status"]);
        if spec_changed {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(g + 1);
        }
        let rv = self.bump(state);
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.objects.insert(key.clone(), new.clone());
        self.log(state, rv, &key, "MODIFIED", new.clone());
        new
    }

    fn commit_delete(&self, state: &mut State, _kind: Kind, key: &Key) -> Option<Value> {
        let mut obj = state.objects.remove(key)?;
        let rv = self.bump(state);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.log(state, rv, key, "DELETED", obj.clone());
        Some(obj)
    }

    fn log(&self, state: &mut State, rv: u64, key: &Key, type_: &'static str, object: Value) {
        state.log.push(LogEntry {
            rv,
            plural: key.0.clone(),
            namespace: key.1.clone(),
            type_,
            object,
        });
        self.notify.send_replace(rv);
    }

    // === HTTP ===

    /// Answers the next `n` status patches with 500 (an API server hiccup).
    pub fn fail_status_patches(&self, n: usize) {
        self.lock().failing_status_patches = n;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        self.lock().requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
        });
        if method == Method::PATCH && path.ends_with("/status") {
            let mut state = self.lock();
            if state.failing_status_patches > 0 {
                state.failing_status_patches -= 1;
                return status_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "injected failure",
                );
            }
        }
        let params = parse_query(&query);
        let Some(target) = parse_path(&path) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            );
        };
        let Some(kind) = kind_by_plural(&target.plural) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("unknown resource {}", target.plural),
            );
        };
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let ns = target.namespace.clone().unwrap_or_default();
        match (&method, &target.name, target.subresource.as_deref()) {
            (&Method::GET, None, None) => {
                if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
                    self.watch(kind, target.namespace.clone(), &params)
                } else {
                    self.list_response(kind, target.namespace.as_deref(), &params)
                }
            }
            (&Method::GET, Some(name), None) => {
                let key = (kind.plural.to_string(), ns, name.clone());
                match self.lock().objects.get(&key) {
                    Some(obj) => json_response(StatusCode::OK, obj),
                    None => not_found(kind, name),
                }
            }
            (&Method::POST, None, None) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "body is not JSON",
                    );
                };
                if kind.namespaced {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                let mut state = self.lock();
                let name = match obj["metadata"]["name"].as_str() {
                    Some(n) if !n.is_empty() => n.to_string(),
                    _ => match obj["metadata"]["generateName"].as_str() {
                        Some(prefix) => format!("{prefix}{:05}", state.rv + 1),
                        None => {
                            return status_response(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "Invalid",
                                "name or generateName is required",
                            )
                        }
                    },
                };
                obj["metadata"]["name"] = json!(name);
                let key = (kind.plural.to_string(), ns, name.clone());
                if state.objects.contains_key(&key) {
                    return status_response(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{} {name:?} already exists", kind.plural),
                    );
                }
                let created = self.commit_create(&mut state, kind, key, obj);
                json_response(StatusCode::CREATED, &created)
            }
            (&Method::PUT, Some(name), None) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "body is not JSON",
                    );
                };
                let mut state = self.lock();
                let key = (kind.plural.to_string(), ns.clone(), name.clone());
                let Some(old) = state.objects.get(&key).cloned() else {
                    return not_found(kind, name);
                };
                let sent_rv = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
                if !sent_rv.is_empty()
                    && sent_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("")
                {
                    return status_response(StatusCode::CONFLICT, "Conflict", &format!("Operation cannot be fulfilled on {} {name:?}: the object has been modified", kind.plural));
                }
                if kind.namespaced {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                if kind.has_status {
                    match old.get("status") {
                        Some(s) => obj["status"] = s.clone(),
                        None => {
                            if let Some(o) = obj.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
                let updated = self.commit_update(&mut state, kind, key, old, obj);
                json_response(StatusCode::OK, &updated)
            }
            (&Method::PATCH, Some(name), sub) if sub.is_none() || sub == Some("status") => {
                if !content_type.starts_with("application/merge-patch+json") {
                    return status_response(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "only merge patches",
                    );
                }
                let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                    return status_response(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "body is not JSON",
                    );
                };
                let mut state = self.lock();
                let key = (kind.plural.to_string(), ns, name.clone());
                let Some(old) = state.objects.get(&key).cloned() else {
                    return not_found(kind, name);
                };
                let mut merged = old.clone();
                merge_patch(&mut merged, &patch);
                let new = match sub {
                    // Only status changes count on the status subresource...
                    Some(_) => {
                        let mut n = old.clone();
                        match merged.get("status") {
                            Some(s) => n["status"] = s.clone(),
                            None => {
                                if let Some(o) = n.as_object_mut() {
                                    o.remove("status");
                                }
                            }
                        }
                        n
                    }
                    // ...and none on the main resource of a kind that has one.
                    None if kind.has_status => {
                        let mut n = merged;
                        match old.get("status") {
                            Some(s) => n["status"] = s.clone(),
                            None => {
                                if let Some(o) = n.as_object_mut() {
                                    o.remove("status");
                                }
                            }
                        }
                        n
                    }
                    None => merged,
                };
                let updated = self.commit_update(&mut state, kind, key, old, new);
                json_response(StatusCode::OK, &updated)
            }
            (&Method::DELETE, Some(name), None) => {
                let mut state = self.lock();
                let key = (kind.plural.to_string(), ns, name.clone());
                match self.commit_delete(&mut state, kind, &key) {
                    Some(obj) => json_response(StatusCode::OK, &obj),
                    None => not_found(kind, name),
                }
            }
            _ => status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported by the fake",
            ),
        }
    }

    fn list_response(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        params: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let state = self.lock();
        let filter = Filter::new(namespace, params);
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(k, v)| k.0 == kind.plural && filter.matches(&k.1, v))
            .map(|(_, v)| v.clone())
            .collect();
        let list = json!({
            "apiVersion": kind.api_version,
            "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        });
        json_response(StatusCode::OK, &list)
    }

    fn watch(
        &self,
        kind: Kind,
        namespace: Option<String>,
        params: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let filter = Filter::new(namespace.as_deref(), params);
        let since: u64 = params
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let state = self.state.clone();
        let mut notify = self.notify.subscribe();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut since = since;
            // resourceVersion 0 or unset: start with the current objects.
            if since == 0 {
                let (lines, rv) = {
                    let s = state.lock().unwrap_or_else(|e| e.into_inner());
                    let lines: Vec<Bytes> = s
                        .objects
                        .iter()
                        .filter(|(k, v)| k.0 == kind.plural && filter.matches(&k.1, v))
                        .map(|(_, v)| line("ADDED", v))
                        .collect();
                    (lines, s.rv)
                };
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                since = rv;
            }
            loop {
                notify.borrow_and_update();
                let lines: Vec<Bytes> = {
                    let s = state.lock().unwrap_or_else(|e| e.into_inner());
                    let lines = s
                        .log
                        .iter()
                        .filter(|e| {
                            e.rv > since
                                && e.plural == kind.plural
                                && filter.matches(&e.namespace, &e.object)
                        })
                        .map(|e| line(e.type_, &e.object))
                        .collect();
                    since = s.rv;
                    lines
                };
                for l in lines {
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = notify.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        res
    }
}

fn line(type_: &str, object: &Value) -> Bytes {
    let mut text =
        serde_json::to_string(&json!({"type": type_, "object": object})).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

struct Target {
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1/...` or `/apis/GROUP/VERSION/...`, then
/// `[namespaces/NS/]PLURAL[/NAME[/SUB]]`.
fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match *parts.first()? {
        "api" => parts.get(2..)?,
        "apis" => parts.get(3..)?,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    Some(Target {
        namespace,
        plural: rest.first()?.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) if hex.len() == 2 => {
                        out.push(b);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone)]
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, bool, String)>,
    labels: Vec<LabelReq>,
}

#[derive(Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Filter {
    fn new(namespace: Option<&str>, params: &BTreeMap<String, String>) -> Filter {
        let terms = |key: &str| -> Vec<String> {
            params
                .get(key)
                .map(|s| {
                    s.split(',')
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let fields = terms("fieldSelector")
            .into_iter()
            .filter_map(|t| {
                if let Some((k, v)) = t.split_once("!=") {
                    Some((k.to_string(), false, v.to_string()))
                } else {
                    let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
                    Some((k.to_string(), true, v.to_string()))
                }
            })
            .collect();
        let labels = terms("labelSelector")
            .into_iter()
            .map(|t| {
                if let Some((k, v)) = t.split_once("!=") {
                    LabelReq::Ne(k.into(), v.into())
                } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                    LabelReq::Eq(k.into(), v.into())
                } else if let Some(k) = t.strip_prefix('!') {
                    LabelReq::Absent(k.into())
                } else {
                    LabelReq::Exists(t)
                }
            })
            .collect();
        Filter {
            namespace: namespace.map(String::from),
            fields,
            labels,
        }
    }

    fn matches(&self, namespace: &str, obj: &Value) -> bool {
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let fields_ok = self.fields.iter().all(|(path, eq, want)| {
            let mut v = obj;
            for part in path.split('.') {
                v = &v[part];
            }
            let got = v.as_str().unwrap_or("");
            (got == want) == *eq
        });
        let labels = &obj["metadata"]["labels"];
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => labels[k].as_str() == Some(v),
            LabelReq::Ne(k, v) => labels[k].as_str() != Some(v),
            LabelReq::Exists(k) => labels.get(k).is_some(),
            LabelReq::Absent(k) => labels.get(k).is_none(),
        });
        fields_ok && labels_ok
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Some(t) = target.as_object_mut() else {
                return;
            };
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn strip(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut res = Response::new(BodyExt::boxed(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    ))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

fn status_response(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": status.as_u16(),
        }),
    )
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    status_response(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} {name:?} not found", kind.plural),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }
}
