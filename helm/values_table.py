"""Generate the values table of helm/README.md from helm/vestibule/values.yaml.

Descriptions come from the `# --` comments above each key (EXTRA fills in the
keys without one). validate.py fails when README.md's table is stale:

    python3 helm/values_table.py   # prints the table; paste it under "## Values"
"""

import json
import os
import re
import sys

import yaml

COLLAPSE = {'podSecurityContext','containerSecurityContext','resources','livenessProbe','readinessProbe','updateStrategy','labels'}
EXTRA = {
 'image.pullPolicy': 'Image pull policy.',
 'ingressClass.annotations': 'Extra IngressClass annotations.',
 'podSecurityContext': 'Pod security context of both workloads (non-root 65532, seccomp RuntimeDefault).',
 'containerSecurityContext': 'Container security context of both workloads (read-only root FS, no privilege escalation, all capabilities dropped).',
 'operator.resources': 'Operator resources.', 'gateway.resources': 'Gateway resources.',
 'operator.livenessProbe': 'GET /healthz on the metrics port.', 'operator.readinessProbe': 'GET /readyz on the metrics port (ready once a config is published).',
 'gateway.livenessProbe': 'GET /healthz on the admin port.', 'gateway.readinessProbe': 'GET /readyz on the admin port (ready once a config is live).',
 'operator.podDisruptionBudget.enabled': 'Create the operator PodDisruptionBudget.',
 'gateway.podDisruptionBudget.enabled': 'Create the gateway PodDisruptionBudget.',
 'gateway.podDisruptionBudget.minAvailable': 'Alternative to maxUnavailable (set that to "").',
 'gateway.updateStrategy': 'DaemonSet rolling update settings.',
 'operator.serviceAccount.create': 'Create the operator ServiceAccount.', 'operator.serviceAccount.name': 'Its name; empty means <fullname>-operator.',
 'operator.serviceAccount.annotations': 'ServiceAccount annotations.',
 'gateway.serviceAccount.create': 'Create the gateway ServiceAccount (no RBAC, token not mounted).', 'gateway.serviceAccount.name': 'Its name; empty means <fullname>-gateway.',
 'gateway.serviceAccount.annotations': 'ServiceAccount annotations.',
 'operator.service.annotations': 'Annotations of the operator (config server) Service.',
 'gateway.service.annotations': 'Extra annotations of the gateway Service (cloud LB settings, MetalLB loadBalancerIPs...).',
 'gateway.service.labels': 'Extra labels of the gateway Service.',
 'gateway.service.loadBalancerClass': 'spec.loadBalancerClass.', 'gateway.service.loadBalancerSourceRanges': 'Client CIDRs allowed by the load balancer.',
 'gateway.service.ipFamilyPolicy': 'SingleStack, PreferDualStack or RequireDualStack.', 'gateway.service.ipFamilies': 'e.g. [IPv4, IPv6].',
 'networkPolicy.enabled': 'Create the operator NetworkPolicy.',
 'metrics.service.enabled': 'ClusterIP Service `<fullname>-gateway-metrics` on the gateway admin port (the operator Service always carries its metrics port).',
 'metrics.serviceMonitor.labels': 'Labels your Prometheus selects ServiceMonitors by.',
 'metrics.serviceMonitor.interval': 'Scrape interval.', 'metrics.serviceMonitor.scrapeTimeout': 'Scrape timeout.',
 'gateway.ports.https': 'HTTPS container port.', 'gateway.service.ports.http': 'Service port for HTTP.', 'gateway.service.ports.https': 'Service port for HTTPS.',
 'gateway.service.nodePorts.http': 'Node port for HTTP (NodePort fallback; empty lets Kubernetes pick).', 'gateway.service.nodePorts.https': 'Node port for HTTPS.',
 'grafanaDashboard.labels': 'Labels the Grafana sidecar looks for.', 'grafanaDashboard.annotations': 'for example grafana_folder.',
}


def table(values_path: str) -> tuple[str, list[str]]:
    """The README values table for values_path, and the keys without a description."""
    with open(values_path) as f:
        text = f.read()
    lines = text.splitlines()
    vals = yaml.safe_load(text)
    missing: list[str] = []
    SCHED = ['podAnnotations','podLabels','priorityClassName','nodeSelector','tolerations','affinity','topologySpreadConstraints']
    path = []; desc = []; collecting = False; rows = []; skip_under = None
    def get(d, ks):
        for k in ks: d = d[k]
        return d
    for ln in lines:
        s = ln.strip()
        if s.startswith('# --'):
            desc = [s[4:].strip()]; collecting = True; continue
        if s.startswith('#'):
            if collecting: desc.append(s[1:].strip())
            continue
        if not s:
            collecting = False; desc = []; continue
        m = re.match(r'^(\s*)([A-Za-z0-9_]+):(.*)$', ln)
        if not m: continue
        ind = len(m.group(1)); key = m.group(2)
        while path and path[-1][0] >= ind: path.pop()
        if skip_under is not None and ind > skip_under: continue
        skip_under = None
        path.append((ind, key))
        ks = [k for _, k in path]
        full = '.'.join(ks)
        v = get(vals, ks)
        if ks[0] in ('operator','gateway') and len(ks) == 2 and key in SCHED:
            if key == 'podAnnotations':
                rows.append((f'{ks[0]}.{{podAnnotations,podLabels,priorityClassName,nodeSelector,tolerations,topologySpreadConstraints}}', '', 'Scheduling and pod metadata, as in any chart.'))
            if key == 'affinity':
                rows.append((full, '{}', ' '.join(desc)))
            desc = []; collecting = False; continue
        collapse = key in COLLAPSE and isinstance(v, dict) and v
        leaf = not isinstance(v, dict) or v == {} or collapse
        if collapse: skip_under = ind
        if leaf:
            dv = '(see values.yaml)' if collapse else json.dumps(v)
            t = ' '.join(desc) or EXTRA.get(full, '')
            rows.append((full, dv, t))
        collecting = False; desc = []
    out = ['| Key | Default | Description |', '| --- | --- | --- |']
    for k, d, t in rows:
        d = d.replace('|', '\\|')
        dd = f'`{d}`' if d and not d.startswith('(') else d
        if not t:
            missing.append(k)
        parts = t.split('`')
        t = '`'.join(x.replace('<', '&lt;').replace('>', '&gt;') if i % 2 == 0 else x for i, x in enumerate(parts))
        out.append(f"| `{k}` | {dd} | {t} |")
    return "\n".join(out) + "\n", missing

def get(d, ks):
    for k in ks:
        d = d[k]
    return d


if __name__ == "__main__":
    text, missing = table(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vestibule", "values.yaml"))
    sys.stdout.write(text)
    if missing:
        sys.exit(f"values without a description: {missing}")
