//! ACME Renewal Information (RFC 9773): a certificate's id, and when the
//! CA suggests renewing it (earlier than two thirds of its lifetime when
//! the CA plans a revocation or a change of chain).

use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::CertificateDer;

/// When to ask again if the CA sends no usable Retry-After (RFC 9773 §4.3
/// has clients poll about daily; a bound keeps a hostile value sane).
const RECHECK_MIN: Duration = Duration::from_secs(60);
const RECHECK_MAX: Duration = Duration::from_secs(24 * 3600);

/// The ARI id of a leaf (`base64url(AKI keyIdentifier).base64url(serial)`),
/// or `None` when it has no Authority Key Identifier.
pub fn certificate_id(leaf: &CertificateDer<'_>) -> Option<String> {
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(|id| id.to_string())
}

/// What the CA said about one certificate.
#[derive(Debug)]
pub enum Answer {
    /// Renew at this time (picked in the suggested window); ask again after.
    Window {
        renew_at: SystemTime,
        ask_again: Duration,
    },
    /// The CA publishes no renewal information.
    Unsupported,
}

/// Asks the CA about the certificate `id` of `domain`.
pub async fn ask(
    account: &Account,
    domain: &str,
    id: &str,
    timeout: Duration,
) -> Result<Answer, String> {
    let (aki, serial) = id
        .split_once('.')
        .ok_or_else(|| format!("ARI id {id:?} is not AKI.serial"))?;
    let parsed = CertificateIdentifier {
        authority_key_identifier: aki.into(),
        serial: serial.into(),
    };
    let asked = tokio::time::timeout(timeout, account.renewal_info(&parsed)).await;
    match asked {
        Err(_) => Err(format!("no renewal information within {timeout:?}")),
        Ok(Err(instant_acme::Error::Unsupported(_))) => Ok(Answer::Unsupported),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((info, retry_after))) => {
            let start = SystemTime::from(info.suggested_window.start);
            let end = SystemTime::from(info.suggested_window.end);
            Ok(Answer::Window {
                renew_at: pick(start, end, domain),
                ask_again: retry_after.clamp(RECHECK_MIN, RECHECK_MAX),
            })
        }
    }
}

/// A point in `[start, end)` that differs between domains (RFC 9773 §4.2
/// asks for a random time in the window, so a fleet does not renew at once).
fn pick(start: SystemTime, end: SystemTime, domain: &str) -> SystemTime {
    let width = end.duration_since(start).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    domain.hash(&mut h);
    let fraction = (h.finish() % 1000) as u32;
    start + width * fraction / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pick_is_inside_the_window_and_spread() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(3600);
        let picks: Vec<_> = ["a.test", "b.test", "c.test", "d.test"]
            .iter()
            .map(|d| pick(start, end, d))
            .collect();
        assert!(picks.iter().all(|t| *t >= start && *t < end));
        assert!(picks.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(pick(start, start, "a.test"), start);
    }
}
