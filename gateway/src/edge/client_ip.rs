//! The real client address of a request. It is the connection's peer (the
//! PROXY protocol's client, when the listener speaks it), unless that peer
//! is a trusted proxy (`--trusted-proxies`): then `X-Forwarded-For` is read
//! from the right, past every trusted address, and the first untrusted one
//! is the client (nginx's `real_ip_recursive on`). A client can add what it
//! likes on the left of that header; only what trusted hops appended is
//! believed. The real address feeds source-range rules, rate limits,
//! forwarding headers and the access log.

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;
use ipnet::IpNet;
use pingora_http::RequestHeader;

/// Peers whose `X-Forwarded-For` is believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// Who sent a request, and through whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The real client.
    pub ip: IpAddr,
    /// The connection's peer: the client, or the trusted proxy in front.
    pub peer: IpAddr,
    /// A trusted peer's `X-Forwarded-For` (its header lines joined): the
    /// upstream's gets the peer appended to it. `None`: the chain starts at
    /// the peer.
    pub forwarded_for: Option<HeaderValue>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request that came from `peer`. Allocates only for a
    /// trusted peer that forwarded an address.
    pub fn client(&self, peer: IpAddr, req: &RequestHeader) -> Client {
        let untrusted = Client {
            ip: peer,
            peer,
            forwarded_for: None,
        };
        if self.0.is_empty() || !self.trusts(peer) {
            return untrusted;
        }
        let lines = req.headers.get_all("x-forwarded-for");
        let mut ip = peer;
        // Right to left over every line's entries.
        'walk: for line in lines.iter().rev() {
            let Ok(text) = line.to_str() else {
                break;
            };
            for entry in text.rsplit(',') {
                match parse_entry(entry) {
                    Some(hop) => {
                        ip = hop;
                        if !self.trusts(hop) {
                            break 'walk;
                        }
                    }
                    // Garbage: the last address believed stands.
                    None => break 'walk,
                }
            }
        }
        let joined: Vec<&[u8]> = lines.iter().map(HeaderValue::as_bytes).collect();
        let forwarded_for = match joined.as_slice() {
            [] => None,
            [one] => HeaderValue::from_bytes(one).ok(),
            many => HeaderValue::from_bytes(&many.join(&b", "[..])).ok(),
        };
        Client {
            ip,
            peer,
            forwarded_for,
        }
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port
/// (`1.2.3.4:5`, `[::1]:5`) as some balancers write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(xff: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            r.append_header("X-Forwarded-For", *v).unwrap();
        }
        r
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ])
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let peer: IpAddr = "203.0.113.5".parse().unwrap();
        let c = trusted().client(peer, &request(&["1.1.1.1"]));
        assert_eq!(c.ip, peer);
        assert_eq!(c.forwarded_for, None);
        let c =
            TrustedProxies::default().client("10.0.0.1".parse().unwrap(), &request(&["1.1.1.1"]));
        assert_eq!(c.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_trusted_peer_is_read_from_the_right_past_trusted_hops() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let c = trusted().client(peer, &request(&["6.6.6.6, 198.51.100.7", "10.2.2.2"]));
        assert_eq!(c.ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.forwarded_for.unwrap(), "6.6.6.6, 198.51.100.7, 10.2.2.2");
        // Ports and IPv6 as balancers write them.
        let c = trusted().client(peer, &request(&["[2001:db9::1]:443, 10.3.3.3:80"]));
        assert_eq!(c.ip, "2001:db9::1".parse::<IpAddr>().unwrap());
        // Only trusted hops: the leftmost.
        let c = trusted().client(peer, &request(&["10.9.9.9, 10.8.8.8"]));
        assert_eq!(c.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        // Garbage stops the walk at the last believed address.
        let c = trusted().client(peer, &request(&["198.51.100.7, bogus, 10.4.4.4"]));
        assert_eq!(c.ip, "10.4.4.4".parse::<IpAddr>().unwrap());
        // No header: the peer.
        let c = trusted().client(peer, &request(&[]));
        assert_eq!((c.ip, c.forwarded_for), (peer, None));
    }
}
