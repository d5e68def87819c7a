//! Manifests of a cluster migrating from ingress-nginx: Ingresses of
//! class `vestibule` in namespace `saas` with annotations, Services with
//! their EndpointSlices, and a gateway serving them.

use std::net::SocketAddr;

use super::{Gateway, TempDir, Upstream};

pub fn ingress(name: &str, service: &str, annotations: &str, created: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: saas
  creationTimestamp: "{created}"
  annotations: {{{annotations}}}
spec:
  ingressClassName: vestibule
  rules:
    - host: shop.test
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}
"#
    )
}

pub fn service(name: &str, up: &Upstream) -> String {
    service_at(name, up.addr)
}

/// Service `name` (port 80) whose one endpoint is `addr`.
pub fn service_at(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: saas}}
spec: {{ports: [{{port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: saas, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {port}}}]
endpoints: [{{addresses: ["{ip}"]}}]
"#,
        port = addr.port(),
        ip = addr.ip(),
    )
}

pub const CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: vestibule}\nspec: {controller: vestibule.dev/ingress-controller}\n";

/// A gateway serving Service `app` and one Ingress per (name, host,
/// annotations) to it.
pub async fn gateway_with(
    tag: &str,
    app: &Upstream,
    ingresses: &[(&str, &str, &str)],
) -> (Gateway, TempDir) {
    let mut manifests = vec![service("app", app)];
    for (name, host, annotations) in ingresses {
        manifests.push(
            ingress(name, "app", annotations, "2024-01-01T00:00:00Z").replace("shop.test", host),
        );
    }
    serve(tag, manifests).await
}

/// A gateway serving `manifests` (and the IngressClass).
pub async fn serve(tag: &str, mut manifests: Vec<String>) -> (Gateway, TempDir) {
    let dir = TempDir::new(tag);
    manifests.insert(0, CLASS.to_string());
    std::fs::write(dir.0.join("all.yaml"), manifests.join("\n---\n")).unwrap();
    let gw = Gateway::start(&["--manifests", dir.0.to_str().unwrap()], &[]).await;
    (gw, dir)
}
