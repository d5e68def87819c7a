//! What the operator -> gateway tests share: a cluster of many Ingresses on
//! one upstream, and a gateway's flags for an operator.

use std::path::Path;

use crate::{gw, op};

/// An IngressClass, one Service with its EndpointSlice on `up`, and `n`
/// Ingresses `site-<i>` for `h<i>.example.com`.
pub fn hosts_on(api: &op::FakeApi, up: &gw::Upstream, n: usize) {
    api.apply(op::ingress_class());
    api.apply(op::service("shop", "web", 80));
    api.apply(op::endpoint_slice(
        "shop",
        "web",
        &["127.0.0.1"],
        i32::from(up.addr.port()),
    ));
    for i in 0..n {
        api.apply(op::ingress(
            "shop",
            &format!("site-{i}"),
            &format!("h{i}.example.com"),
            "web",
            80,
        ));
    }
}

/// An operator on `api` and a gateway long-polling it (with a state
/// directory), started with `extra` flags.
pub struct Scene {
    pub operator: vestibule_operator::Running,
    pub gateway: gw::Gateway,
    pub state: gw::TempDir,
    /// The gateway's source flags, to start it again.
    pub flags: Vec<String>,
}

pub async fn operator_and_gateway(api: &op::FakeApi, extra: &[&str]) -> Scene {
    let settings = op::test_settings("op-1");
    let token_file = settings.token_file.clone();
    let operator = op::start(api, settings).await;
    let state = gw::TempDir::new("state");
    let flags = operator_flags(&operator, &token_file, &state.0);
    let gateway = gw::Gateway::start(&args(&flags), extra).await;
    Scene {
        operator,
        gateway,
        state,
        flags,
    }
}

/// Borrowed flags, as `Gateway::start` takes them.
pub fn args(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// `--operator URL --token-file FILE --state-dir DIR`.
fn operator_flags(
    operator: &vestibule_operator::Running,
    token_file: &Path,
    state: &Path,
) -> Vec<String> {
    [
        "--operator".to_string(),
        format!("http://{}", operator.config_addr),
        "--token-file".to_string(),
        token_file.to_str().expect("utf8").to_string(),
        "--state-dir".to_string(),
        state.to_str().expect("utf8").to_string(),
    ]
    .to_vec()
}
