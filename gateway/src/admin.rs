//! The admin listener (never on the public ports): the probes `/healthz`
//! and `/readyz`, always open, and `/metrics` (Prometheus text) and
//! `/config` (version, counts, last error), which need the bearer token of
//! `--admin-token-file` when one is set. GET and HEAD only. Served behind
//! the same connection guard as the proxy (head and idle deadlines) with
//! small caps of its own (see `serve`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

use crate::conn;
use crate::runtime::{ConfigStatus, Shared, Summary};

const TEXT: &str = "text/plain; charset=utf-8";

pub struct Admin {
    shared: Arc<Shared>,
    /// Who may read `/metrics` and `/config`.
    access: Access,
}

/// Who may read the non-probe endpoints.
pub enum Access {
    Open,
    /// `Authorization: Bearer <token>`, the token read from this file at
    /// each request (a rotated Secret applies without a restart).
    Token(PathBuf),
}

/// What a request asked for, before the answer.
enum Route {
    Probe,
    Protected,
    Unknown,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, access: Access) -> Self {
        Admin { shared, access }
    }

    /// The response to a request; separate from the session for unit tests.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> (StatusCode, &'static str, Vec<u8>) {
        if method != Method::GET && method != Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                b"GET or HEAD only\n".to_vec(),
            );
        }
        let route = match path {
            "/healthz" | "/readyz" => Route::Probe,
            "/metrics" | "/config" => Route::Protected,
            _ => Route::Unknown,
        };
        match route {
            Route::Unknown => (StatusCode::NOT_FOUND, TEXT, b"not found\n".to_vec()),
            Route::Protected if !self.authorized(authorization) => (
                StatusCode::UNAUTHORIZED,
                TEXT,
                b"bearer token required\n".to_vec(),
            ),
            Route::Probe | Route::Protected => self.handle(path),
        }
    }

    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Access::Token(file) = &self.access else {
            return true;
        };
        let Some(token) = read_token(file) else {
            // A token file that can't be read locks the endpoints rather
            // than opening them.
            return false;
        };
        let sent = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        constant_time_eq(sent, token.as_bytes())
    }

    /// The response for a path, access already checked.
    pub fn handle(&self, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
        match path {
            "/healthz" => (StatusCode::OK, TEXT, b"ok\n".to_vec()),
            "/readyz" if self.shared.is_ready() => (StatusCode::OK, TEXT, b"ready\n".to_vec()),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                b"no config is live yet\n".to_vec(),
            ),
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.render_metrics(),
            ),
            "/config" => {
                let runtime = self.shared.runtime.load_full();
                let view = ConfigView {
                    ready: self.shared.is_ready(),
                    version: runtime.version.as_str(),
                    summary: &runtime.summary,
                    status: self.shared.status(),
                    acme: self.shared.acme.get().map(|a| a.summary()),
                };
                let body = serde_json::to_vec_pretty(&view).unwrap_or_default();
                (StatusCode::OK, "application/json", body)
            }
            _ => (StatusCode::NOT_FOUND, TEXT, b"not found\n".to_vec()),
        }
    }
}

#[derive(Serialize)]
struct ConfigView<'a> {
    ready: bool,
    version: &'a str,
    #[serde(flatten)]
    summary: &'a Summary,
    #[serde(flatten)]
    status: ConfigStatus,
    /// The ACME issuer of `--manifests` mode: planned, issued, pending and
    /// failing domains.
    #[serde(skip_serializing_if = "Option::is_none")]
    acme: Option<vestibule_acme::manager::Summary>,
}

/// The token, trimmed; `None` when the file can't be read or is empty.
fn read_token(file: &Path) -> Option<String> {
    let token = std::fs::read_to_string(file).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // The head is in; admin requests have no body to read.
        conn::head_done(session.stream(), false);
        let req = session.req_header();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let (status, content_type, body) = self.respond(&req.method, req.uri.path(), authorization);
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(
                    http::header::ALLOW,
                    http::HeaderValue::from_static("GET, HEAD"),
                );
            }
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            _ => {}
        }
        let len = resp.body().len();
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        // The connection now idles until its next request.
        conn::request_done(session.stream());
        resp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;

    #[test]
    fn ready_only_after_a_swap() {
        let shared = Shared::new(Default::default(), "test".into()).unwrap();
        let admin = Admin::new(shared.clone(), Access::Open);
        assert_eq!(admin.handle("/healthz").0, StatusCode::OK);
        assert_eq!(admin.handle("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        shared.swap(Runtime::empty());
        assert_eq!(admin.handle("/readyz").0, StatusCode::OK);
        let (_, _, body) = admin.handle("/config");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["ready"], true);
        assert_eq!(v["swaps"], 1);
        let (_, _, metrics) = admin.handle("/metrics");
        assert!(String::from_utf8(metrics)
            .unwrap()
            .contains("vestibule_config_swaps_total 1"));
    }

    #[test]
    fn methods_and_tokens() {
        let shared = Shared::new(Default::default(), "test".into()).unwrap();
        let dir = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let admin = Admin::new(shared, Access::Token(file.clone()));
        let get = Method::GET;
        let code = |m: &Method, p: &str, auth: Option<&[u8]>| admin.respond(m, p, auth).0;
        assert_eq!(
            code(&Method::POST, "/healthz", None),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            code(&Method::DELETE, "/config", None),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(code(&get, "/healthz", None), StatusCode::OK);
        assert_eq!(code(&Method::HEAD, "/healthz", None), StatusCode::OK);
        assert_eq!(code(&get, "/metrics", None), StatusCode::UNAUTHORIZED);
        assert_eq!(
            code(&get, "/config", Some(b"Bearer nope")),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            code(&get, "/config", Some(b"Bearer s3cret")),
            StatusCode::OK
        );
        assert_eq!(
            code(&get, "/nope", Some(b"Bearer s3cret")),
            StatusCode::NOT_FOUND
        );
        // An unreadable token file locks, never opens.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            code(&get, "/metrics", Some(b"Bearer s3cret")),
            StatusCode::UNAUTHORIZED
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
