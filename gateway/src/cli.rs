//! The command line (DESIGN.md "Binaries") and the settings derived from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

use crate::conn::ClientLimits;
use crate::edge::headers::Underscores;
use crate::proxy::ProxySettings;
use crate::upstream::UpstreamSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// How HTTP/1 header names are spelled on their way through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HeaderCase {
    /// As the client or the upstream sent them, like nginx: every HTTP/1
    /// head keeps a second map of the names as sent.
    Preserve,
    /// As HTTP/2 spells them: lowercase, a few well-known names titled
    /// (`Host`, `Content-Length`...), like Envoy and HAProxy. One header map
    /// per head instead of two: less CPU per request.
    Canonical,
}

/// Vestibule gateway: serves a GatewayConfig from a manifests directory or a
/// compiled config file, and applies changes live.
#[derive(Debug, Parser)]
#[command(name = "vestibule-gateway", version)]
#[command(group(ArgGroup::new("source").required(true).args(["manifests", "config", "operator"])))]
pub struct Cli {
    /// Directory of Kubernetes YAML (Ingress, Service, EndpointSlice, Secret,
    /// Tenant...), translated in process and watched.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// A compiled GatewayConfig (YAML or JSON), watched.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The operator's config server (http://... or https://...), long-polled.
    #[arg(long, value_name = "URL", requires = "token_file")]
    pub operator: Option<String>,
    /// Bearer token for the operator (file; re-read on every poll).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// CA certificate(s) that sign the operator's certificate (https only).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// With --operator: where the last applied config is kept, to start
    /// from when the operator is unreachable at boot. With --manifests:
    /// where ACME accounts and issued certificates are kept (`acme/`);
    /// Tenants with `tls.acme` get certificates only when it is set.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Plain HTTP listener.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    /// HTTPS listener (TLS 1.2/1.3, ALPN h2 and http/1.1, a certificate per
    /// SNI); its port is also where plain HTTP to TLS hosts is redirected.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub https: SocketAddr,
    /// Certificate chain (PEM) presented when the SNI names no host with a
    /// usable certificate, or is absent; without it such handshakes fail.
    #[arg(long, value_name = "PATH", requires = "default_key")]
    pub default_cert: Option<PathBuf>,
    /// Private key (PEM) of `--default-cert`.
    #[arg(long, value_name = "PATH", requires = "default_cert")]
    pub default_key: Option<PathBuf>,
    /// Admin listener: /healthz /readyz /metrics /config.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Worker threads of the proxy.
    #[arg(long, value_name = "N", default_value_t = default_threads())]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Do not emit an access log event per request.
    #[arg(long)]
    pub no_access_log: bool,
    /// Active health check interval, e.g. 5s or 200ms.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "VESTIBULE_HEALTH_INTERVAL")]
    pub health_interval: Duration,
    /// Consecutive connect failures or 5xx that eject an endpoint.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub eject_after: u32,
    /// How long an ejected endpoint stays out before it is tried again.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "VESTIBULE_EJECT_BACKOFF")]
    pub eject_backoff: Duration,
    /// How often ExternalName pools are resolved again.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub dns_interval: Duration,
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Upstream read and write timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Request line plus headers above this size get 431.
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Bearer token (a file, re-read at each request) that `/metrics` and
    /// `/config` on the admin listener require; the probes stay open.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// With --manifests: serve only hosts a Tenant owns (strict SaaS mode,
    /// as `vestibule-operator run --require-tenant`).
    #[arg(long, requires = "manifests")]
    pub require_tenant: bool,
    /// ACME orders under way at once, in all (--manifests with --state-dir).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub acme_concurrency: usize,
    /// ACME orders under way at once for one tenant.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub acme_tenant_concurrency: usize,
    /// ACME orders one tenant may start per hour (new and renewals).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub acme_tenant_orders_per_hour: u32,
    /// Wait after a domain's first failed ACME order; doubled per failure.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub acme_retry_min: Duration,
    /// Longest wait between attempts for a failing domain.
    #[arg(long, value_name = "DURATION", default_value = "6h", value_parser = parse_duration)]
    pub acme_retry_max: Duration,
    /// Cluster-wide tenant rate limits in Redis or Valkey
    /// (`redis://HOST:PORT[/DB]`, `rediss://` for TLS): each tenant's whole
    /// limit holds across every replica. Without it each replica enforces
    /// its share; with it, that share is the fallback while the store is down.
    #[arg(long, value_name = "URL")]
    pub rate_limit_store: Option<String>,
    /// PEM roots that sign the store's certificate (`rediss://`).
    #[arg(long, value_name = "FILE", requires = "rate_limit_store")]
    pub rate_limit_store_ca: Option<PathBuf>,
    /// File holding the store's AUTH password.
    #[arg(long, value_name = "FILE", requires = "rate_limit_store")]
    pub rate_limit_store_password_file: Option<PathBuf>,
    /// Prefix of the store's keys (one per rate-limited tenant).
    #[arg(long, value_name = "PREFIX", default_value = "vestibule:rl:")]
    pub rate_limit_store_prefix: String,
    /// Largest manifest file `--manifests` reads; a larger one fails the
    /// load (the last good config stays, `/config` names the file).
    #[arg(long, value_name = "BYTES", default_value_t = vestibule_config::manifests::DEFAULT_MAX_FILE_BYTES)]
    pub max_manifest_bytes: u64,
    /// Pass request headers with `_` in their name to upstreams (dropped by
    /// default, like nginx). Those that read as a tenant or forwarding
    /// header once `_` is read as `-` are always dropped.
    #[arg(long)]
    pub allow_underscores_in_headers: bool,
    /// How HTTP/1 header names are written to upstreams and clients. Names
    /// are case-insensitive (RFC 9110); `canonical` costs less CPU, for
    /// backends that do not depend on a spelling.
    #[arg(long, value_enum, value_name = "CASE", default_value_t = HeaderCase::Preserve)]
    pub header_case: HeaderCase,
    /// Every connection to the HTTP and HTTPS listeners starts with a PROXY
    /// protocol header (v1 or v2), whose client address replaces the peer's;
    /// connections without one are closed. Only for listeners that nothing
    /// but the load balancer can reach.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Peers (CIDRs or addresses, comma-separated) whose X-Forwarded-For is
    /// believed: the client is the rightmost address in it that is not
    /// itself trusted, and the upstream's X-Forwarded-For appends to it.
    /// From any other peer the header is replaced.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A request head (line and headers) must arrive completely within this,
    /// counted from the connection's accept or from the head's first byte;
    /// slower clients get 408 and are disconnected (slowloris).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A TLS handshake must complete within this, from the accept (Pingora
    /// alone allows 60 s; a client stalled after its ClientHello holds a
    /// connection that long).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// How long a kept-alive client connection may idle between requests
    /// (also the HTTP/2 idle timeout).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Longest pause while reading a request body or writing a response to
    /// the client (slow body, slow reader).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub client_timeout: Duration,
    /// Connections one client IP may hold open at once (0: no cap); more are
    /// refused (before the TLS handshake on the HTTPS listener).
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections_per_ip: u32,
    /// Slowest request body accepted, in bytes per second of waiting on the
    /// client, after a grace of --header-timeout (0: no minimum); slower
    /// bodies are cut (slow POST).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub body_min_rate: u32,
    /// Concurrent upstream requests per pool on this replica (0: no cap);
    /// more get 503 with Retry-After instead of queueing.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_pool_connections: u32,
    /// On SIGTERM: how long in-flight requests may take to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A CIDR (`10.0.0.0/8`) or a single address.
fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR or an IP address"))
}

/// `250ms`, `5s`, `2m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

impl Cli {
    pub fn upstream_settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            connect_timeout: self.connect_timeout,
            read_timeout: self.upstream_timeout,
            write_timeout: self.upstream_timeout,
            health_interval: self.health_interval.max(Duration::from_millis(10)),
            eject_after: self.eject_after.max(1),
            eject_backoff: self.eject_backoff,
            dns_interval: self.dns_interval.max(Duration::from_secs(1)),
            max_connections: self.max_pool_connections,
            ..UpstreamSettings::default()
        }
    }

    pub fn proxy_settings(&self) -> ProxySettings {
        ProxySettings {
            tls: false,
            https_port: self.https.port(),
            max_header_bytes: self.max_header_bytes,
            // Started once by `serve` and shared by both listeners.
            access_log: None,
            client_timeout: self.client_timeout.max(Duration::from_millis(10)),
            trusted_proxies: std::sync::Arc::new(crate::edge::client_ip::TrustedProxies::new(
                self.trusted_proxies.clone(),
            )),
            underscores: if self.allow_underscores_in_headers {
                Underscores::Allow
            } else {
                Underscores::Drop
            },
        }
    }

    pub fn acme_limits(&self) -> vestibule_acme::Limits {
        vestibule_acme::Limits {
            concurrent: self.acme_concurrency.max(1),
            concurrent_per_tenant: self.acme_tenant_concurrency.max(1),
            tenant_orders_per_hour: self.acme_tenant_orders_per_hour.max(1),
            retry_min: self.acme_retry_min,
            retry_max: self.acme_retry_max.max(self.acme_retry_min),
        }
    }

    /// The cluster-wide rate limit store, if one is named.
    pub fn rate_limit_store_settings(&self) -> Option<crate::ratelimit::StoreSettings> {
        Some(crate::ratelimit::StoreSettings {
            url: self.rate_limit_store.clone()?,
            ca_file: self.rate_limit_store_ca.clone(),
            password_file: self.rate_limit_store_password_file.clone(),
            prefix: self.rate_limit_store_prefix.clone(),
        })
    }

    pub fn client_limits(&self) -> ClientLimits {
        ClientLimits {
            header_timeout: self.header_timeout.max(Duration::from_millis(10)),
            keepalive_timeout: self.keepalive_timeout.max(Duration::from_millis(10)),
            client_timeout: self.client_timeout.max(Duration::from_millis(10)),
            max_connections_per_ip: self.max_connections_per_ip,
            max_connections: 0,
            body_min_rate: self.body_min_rate,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn the_store_flags_need_the_store() {
        use clap::Parser;
        let with = |args: &[&str]| {
            let mut all = vec!["vestibule-gateway", "--config", "c.yaml"];
            all.extend(args);
            Cli::try_parse_from(all)
        };
        assert!(with(&["--rate-limit-store-ca", "ca.pem"]).is_err());
        let cli = with(&[
            "--rate-limit-store",
            "rediss://r:6380",
            "--rate-limit-store-ca",
            "ca.pem",
        ])
        .unwrap();
        let s = cli.rate_limit_store_settings().unwrap();
        assert_eq!(
            (s.url.as_str(), s.prefix.as_str()),
            ("rediss://r:6380", "vestibule:rl:")
        );
    }

    #[test]
    fn every_default_parses() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["vestibule-gateway", "--config", "c.yaml"]).unwrap();
        assert_eq!(cli.acme_retry_max, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn a_source_is_required_and_exclusive() {
        assert!(Cli::try_parse_from(["gw"]).is_err());
        assert!(Cli::try_parse_from(["gw", "--config", "a", "--manifests", "b"]).is_err());
        let cli = Cli::try_parse_from(["gw", "--config", "a"]).unwrap();
        assert_eq!(cli.http.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.admin.to_string(), "127.0.0.1:9901");
    }

    #[test]
    fn default_cert_and_key_come_together() {
        let base = ["gw", "--config", "a"];
        let with = |extra: &[&'static str]| {
            Cli::try_parse_from(base.iter().chain(extra.iter()).copied().collect::<Vec<_>>())
        };
        assert!(with(&["--default-cert", "c"]).is_err());
        assert!(with(&["--default-key", "k"]).is_err());
        let cli = with(&["--default-cert", "c", "--default-key", "k"]).unwrap();
        assert_eq!(cli.default_cert.unwrap().to_str(), Some("c"));
        assert_eq!(cli.https.to_string(), "0.0.0.0:8443");
    }
}
