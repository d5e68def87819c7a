//! The operator's share of each tenant's rate limit per gateway replica:
//! the fleet-wide total never exceeds the Tenant's `rateLimit`, and the
//! result stays deterministic and content-addressed.

use vestibule_config::model::{GatewayConfig, RateLimit, Tenant, TenantId};
use vestibule_config::HostPattern;
use vestibule_operator::publish::per_replica;

fn config(limits: &[(&str, Option<(u32, u32)>)]) -> GatewayConfig {
    GatewayConfig {
        tenants: limits
            .iter()
            .map(|(name, l)| {
                (
                    TenantId::new(*name),
                    Tenant {
                        domains: vec![HostPattern::parse(&format!("{name}.test")).expect("host")],
                        rate_limit: l.map(|(r, b)| RateLimit {
                            requests_per_second: r,
                            burst: b,
                        }),
                        cluster_rate_limit: None,
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
    .seal()
}

fn limit(c: &GatewayConfig, t: &str) -> Option<(u32, u32)> {
    c.tenants[&TenantId::new(t)]
        .rate_limit
        .map(|l| (l.requests_per_second, l.burst))
}

#[test]
fn limits_are_divided_by_replicas_and_the_total_holds() {
    let input = config(&[
        ("acme", Some((500, 1000))),
        ("tiny", Some((2, 3))),
        ("off", Some((0, 0))),
        ("free", None),
    ]);
    for replicas in 1..=7u32 {
        let out = per_replica(input.clone(), replicas);
        for (t, (rps, burst)) in [("acme", (500, 1000)), ("tiny", (2, 3))] {
            let (r, b) = limit(&out, t).expect("limit kept");
            assert!(r >= 1 && b >= 1, "{t} x{replicas}: ({r}, {b})");
            // The fleet total stays within the Tenant's limit, except that a
            // share never drops below 1 (a limit smaller than the fleet).
            if rps >= replicas {
                assert!(r * replicas <= rps, "{t} x{replicas}: {r}");
                assert!(
                    rps - r * replicas < replicas,
                    "{t} x{replicas}: lost more than rounding"
                );
            }
            if burst >= replicas {
                assert!(b * replicas <= burst);
            }
        }
        assert_eq!(limit(&out, "off"), Some((0, 0)), "a zero limit stays zero");
        assert_eq!(limit(&out, "free"), None);
        // Sealed: the version names the divided content, and is stable.
        assert_eq!(out.version, out.content_version());
        assert_eq!(out, per_replica(input.clone(), replicas));
        if replicas > 1 {
            assert_ne!(out.version, input.version);
        }
    }
    assert_eq!(per_replica(input.clone(), 1), input);
    assert_eq!(
        limit(&per_replica(input.clone(), 4), "acme"),
        Some((125, 250))
    );
    // The whole limit travels beside the share, for a cluster-wide store.
    let out = per_replica(input.clone(), 4);
    let acme = &out.tenants[&TenantId::new("acme")];
    assert_eq!(
        acme.cluster_rate_limit,
        Some(RateLimit {
            requests_per_second: 500,
            burst: 1000
        })
    );
    assert_eq!(
        input.tenants[&TenantId::new("acme")].cluster_rate_limit,
        None
    );
}

#[test]
fn translate_subcommand_divides_too() {
    let dir = std::env::temp_dir().join(format!("vestibule-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("tenant.yaml");
    std::fs::write(
        &file,
        "apiVersion: vestibule.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme, creationTimestamp: '2024-01-01T00:00:00Z'}\nspec:\n  domains: [acme.example.com]\n  namespaces: [acme]\n  rateLimit: {requestsPerSecond: 300, burst: 90}\n",
    )
    .expect("write");
    let run = |replicas: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vestibule-operator"))
            .args(["translate", "-f"])
            .arg(&file)
            .args([
                "-o",
                "json",
                "--config-only",
                "--gateway-replicas",
                replicas,
            ])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let one = run("1");
    let three = run("3");
    assert_eq!(
        one["tenants"]["acme"]["rateLimit"]["requestsPerSecond"],
        300
    );
    assert_eq!(
        three["tenants"]["acme"]["rateLimit"]["requestsPerSecond"],
        100
    );
    assert_eq!(three["tenants"]["acme"]["rateLimit"]["burst"], 30);
    assert_ne!(one["version"], three["version"]);
    let _ = std::fs::remove_dir_all(&dir);
}
