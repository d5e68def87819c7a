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

/// `--operator URL --token-file FILE --state-dir DIR`.
pub fn operator_flags(
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
