//! Validated DNS hostnames and the host patterns of Ingress rules and Tenant domains.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A lower-case DNS name (RFC 1123 labels, no trailing dot, no port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("host is empty")]
    Empty,
    #[error("host {0:?} is longer than 253 characters")]
    TooLong(String),
    #[error("host {0:?} has an invalid label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')")]
    BadLabel(String),
    #[error("host {0:?}: a wildcard must be the whole first label, as in *.example.com")]
    BadWildcard(String),
    #[error("host {0:?} is an IP address; Ingress hosts must be DNS names")]
    IpAddress(String),
}

impl Hostname {
    pub fn parse(raw: &str) -> Result<Self, HostnameError> {
        let host = raw.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(HostnameError::Empty);
        }
        if host.len() > 253 {
            return Err(HostnameError::TooLong(raw.to_string()));
        }
        if host.contains('*') {
            return Err(HostnameError::BadWildcard(raw.to_string()));
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Err(HostnameError::IpAddress(raw.to_string()));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err(HostnameError::BadLabel(raw.to_string()));
        }
        Ok(Hostname(host))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Everything after the first label (`a.b.c` -> `b.c`), if there is a dot.
    pub fn parent(&self) -> Option<&str> {
        self.0.split_once('.').map(|(_, rest)| rest)
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Hostname {
    type Err = HostnameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hostname::parse(s)
    }
}

impl Serialize for Hostname {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hostname::parse(&s).map_err(serde::de::Error::custom)
    }
}

// === impl HostPattern ===

/// What a virtual host or a tenant domain matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    /// Exactly this host.
    Exact(Hostname),
    /// `*.suffix`: exactly one extra label in front of `suffix`.
    Wildcard(Hostname),
    /// Every host (an Ingress rule without `host`); written `*`.
    Any,
}

impl HostPattern {
    /// Parses `example.com`, `*.example.com` or `*`.
    pub fn parse(raw: &str) -> Result<Self, HostnameError> {
        if raw == "*" {
            return Ok(HostPattern::Any);
        }
        match raw.strip_prefix("*.") {
            Some(suffix) => {
                Hostname::parse(suffix)
                    .map(HostPattern::Wildcard)
                    .map_err(|e| match e {
                        HostnameError::BadWildcard(_) => {
                            HostnameError::BadWildcard(raw.to_string())
                        }
                        other => other,
                    })
            }
            None => Hostname::parse(raw).map(HostPattern::Exact),
        }
    }

    /// Does this pattern accept the (already lower-cased, port-free) host?
    pub fn matches(&self, host: &Hostname) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.parent() == Some(suffix.as_str()),
            HostPattern::Any => true,
        }
    }

    /// Does this pattern claim every host that `other` can match? Used for
    /// domain ownership: `*.acme.io` covers `a.acme.io` and `*.acme.io`.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Any, _) => true,
            (_, HostPattern::Any) => false,
            (a, HostPattern::Exact(h)) => a.matches(h),
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => a == b,
            (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
        }
    }

    /// Can some host match both patterns?
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        self.covers(other) || other.covers(self)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Wildcard(h) => write!(f, "*.{h}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = HostnameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl Serialize for HostPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hostname {
        Hostname::parse(s).unwrap()
    }
    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn hostnames_are_lowercased_and_validated() {
        assert_eq!(h("Foo.Example.COM.").as_str(), "foo.example.com");
        for bad in [
            "", "-a.com", "a-.com", "a..com", "a b.com", "a_b.com", "10.0.0.1", "a.*.com",
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Hostname::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let w = p("*.example.com");
        assert!(w.matches(&h("a.example.com")));
        assert!(!w.matches(&h("example.com")));
        assert!(!w.matches(&h("a.b.example.com")));
        assert!(HostPattern::parse("*example.com").is_err());
        assert!(HostPattern::parse("*.*.example.com").is_err());
    }

    #[test]
    fn ownership_and_overlap() {
        assert!(p("*.acme.io").covers(&p("a.acme.io")));
        assert!(p("*.acme.io").covers(&p("*.acme.io")));
        assert!(!p("*.acme.io").covers(&p("acme.io")));
        assert!(!p("a.acme.io").covers(&p("*.acme.io")));
        assert!(p("a.acme.io").overlaps(&p("*.acme.io")));
        assert!(!p("*.io").overlaps(&p("*.acme.io")));
    }
}
