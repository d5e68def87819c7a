//! The admin listener (never on the public ports): `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text) and `/config` (version, counts, last error).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Serialize;

use crate::runtime::{ConfigStatus, Shared, Summary};

pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    /// The response for a path; separate from the session for unit tests.
    pub fn handle(&self, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
        const TEXT: &str = "text/plain; charset=utf-8";
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
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, content_type, body) = self.handle(session.req_header().uri.path());
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        let len = resp.body().len();
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
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
        let shared = Shared::new(Default::default(), "test".into());
        let admin = Admin::new(shared.clone());
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
}
