#!/usr/bin/env bash
# End-to-end on a real cluster, for people with Docker (not run in CI: the
# CI machines have no container engine). Brings up kind (or k3d with
# ENGINE=k3d) with MetalLB, builds and loads the image, installs the chart
# with the Gateway API on, applies a demo Tenant, an Ingress, and a Gateway
# with an HTTPRoute in front of an echo backend, and curls all three
# through the gateway's LoadBalancer address.
#
#   tests/kind/run.sh            # kind; the cluster is deleted at the end
#   ENGINE=k3d tests/kind/run.sh
#   KEEP=1 tests/kind/run.sh     # keep the cluster to poke at it
#
# Needs: docker, kind or k3d, kubectl, helm, curl.
set -euo pipefail

ENGINE=${ENGINE:-kind}
CLUSTER=${CLUSTER:-vestibule-e2e}
IMAGE=${IMAGE:-vestibule/vestibule:e2e}
METALLB_VERSION=${METALLB_VERSION:-v0.14.9}
NS=vestibule-system
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

say() { printf '\n== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "missing: $1" >&2; exit 2; }; }
for tool in docker "$ENGINE" kubectl helm curl; do need "$tool"; done

cleanup() {
  if [[ "${KEEP:-0}" == 1 ]]; then
    echo "kept cluster $CLUSTER"
    return
  fi
  case "$ENGINE" in
    kind) kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true ;;
    k3d) k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true ;;
  esac
}
trap cleanup EXIT

say "cluster ($ENGINE)"
case "$ENGINE" in
  kind) kind create cluster --name "$CLUSTER" --wait 120s ;;
  k3d) k3d cluster create "$CLUSTER" --wait \
         --k3s-arg "--disable=traefik@server:0" --k3s-arg "--disable=servicelb@server:0" ;;
  *) echo "ENGINE must be kind or k3d" >&2; exit 2 ;;
esac

say "image"
docker build -t "$IMAGE" "$ROOT"
case "$ENGINE" in
  kind) kind load docker-image "$IMAGE" --name "$CLUSTER" ;;
  k3d) k3d image import "$IMAGE" -c "$CLUSTER" ;;
esac

say "MetalLB $METALLB_VERSION"
kubectl apply -f "https://raw.githubusercontent.com/metallb/metallb/$METALLB_VERSION/config/manifests/metallb-native.yaml"
kubectl -n metallb-system wait --for=condition=Available deployment/controller --timeout=180s
kubectl -n metallb-system rollout status daemonset/speaker --timeout=180s
# A pool at the top of the cluster's Docker network (kind: "kind"; k3d: its own).
network=kind
[[ "$ENGINE" == k3d ]] && network="k3d-$CLUSTER"
subnet=$(docker network inspect "$network" -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')
prefix=$(echo "$subnet" | cut -d. -f1-2)
for try in 1 2 3 4 5 6 7 8 9 10; do
  kubectl apply -f - <<YAML && break
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: e2e, namespace: metallb-system}
spec: {addresses: ["$prefix.255.200-$prefix.255.250"]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: e2e, namespace: metallb-system}
spec: {ipAddressPools: [e2e]}
YAML
  sleep 3   # the webhook may not answer yet
done

say "chart"
helm install vestibule "$ROOT/helm/vestibule" -n "$NS" --create-namespace \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
  --set gatewayAPI.enabled=true --set gatewayAPI.installCRDs=true \
  --set gateway.service.metallb.addressPool=e2e --wait --timeout 300s
kubectl -n "$NS" get pods,svc

say "demo objects: an echo backend, a Tenant, an Ingress, a Gateway and an HTTPRoute"
kubectl apply -f - <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
        - name: echo
          image: registry.k8s.io/echoserver:1.10
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: vestibule.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  domains: [acme.e2e.test]
  namespaces: [demo]
  backend: {namespace: demo, services: [{name: echo, port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: echo, namespace: demo}
spec:
  ingressClassName: vestibule
  rules:
    - host: ingress.e2e.test
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: demo}
spec:
  gatewayClassName: vestibule
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{name: edge}]
  hostnames: [route.e2e.test]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}, headers: [{name: x-e2e, value: "yes"}]}]
      filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-served-by, value: httproute}]}}]
      backendRefs: [{name: echo, port: 80}]
YAML
kubectl -n demo rollout status deployment/echo --timeout=180s

say "addresses and statuses"
svc=$(kubectl -n "$NS" get svc -l app.kubernetes.io/component=gateway \
  -o jsonpath='{.items[?(@.spec.type=="LoadBalancer")].metadata.name}')
addr=""
for _ in $(seq 60); do
  addr=$(kubectl -n "$NS" get svc "$svc" -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
  [[ -n "$addr" ]] && break
  sleep 2
done
[[ -n "$addr" ]] || { echo "the gateway Service got no address" >&2; exit 1; }
echo "gateway at $addr"
kubectl -n demo wait --for=condition=Accepted gateway/edge --timeout=60s
kubectl -n demo get httproute echo -o jsonpath='{.status.parents[0].conditions}'; echo

check() { # name, curl args...; retries while the config propagates
  local name=$1; shift
  for _ in $(seq 30); do
    if out=$(curl -fsS --max-time 5 "$@" 2>&1); then echo "ok: $name"; return 0; fi
    sleep 2
  done
  echo "FAILED: $name: $out" >&2
  return 1
}
check "Tenant backend" -H 'Host: acme.e2e.test' "http://$addr/"
check "Ingress" -H 'Host: ingress.e2e.test' "http://$addr/"
check "HTTPRoute with a header match" -H 'Host: route.e2e.test' -H 'x-e2e: yes' "http://$addr/"
headers=$(curl -sS -D - -o /dev/null -H 'Host: route.e2e.test' -H 'x-e2e: yes' "http://$addr/")
grep -qi '^x-served-by: httproute' <<<"$headers" || { echo "FAILED: response header filter" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: route.e2e.test' "http://$addr/")
[[ "$code" == 404 ]] || { echo "FAILED: without the header the route must not match (got $code)" >&2; exit 1; }
say "all checks passed"
