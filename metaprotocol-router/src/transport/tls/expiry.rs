//! The dates of the certificates the proxy presents (a listener's `cert_file`, a cluster's
//! client certificate).
//!
//! A certificate out of its validity (expired, or not yet valid) is served all the same:
//! refusing it would turn a renewal that is late into an outage of everything behind the
//! listener, or to the cluster, where clients that check dates refuse it anyway and those that
//! do not (or whose clocks differ from ours) go on working. Each time such a certificate is
//! loaded (at start or by a reload) a warning names it; and each presented chain's first
//! notAfter is a gauge, so that an alert can fire well before it comes.

use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;

use super::identity::peer_identity;
use super::pem::PemFile;
use crate::stats::MetricsScope;

/// Watches the dates of one presented chain: a gauge of its first notAfter, warnings about
/// certificates out of their validity.
pub(crate) struct Expiry {
    not_after: Gauge,
}

impl Expiry {
    /// The gauge lives in `scope` (the listener's or cluster's).
    pub fn new(scope: &MetricsScope) -> Self {
        Self {
            not_after: scope.gauge(
                "tls_certificate_expiry_timestamp_seconds",
                "When the first certificate of the chain the proxy presents expires (its notAfter), in seconds since the Unix epoch",
            ),
        }
    }

    /// Takes the chain of `file`, just loaded for `owner` (`listener in`), as the one presented:
    /// sets the gauge to its first notAfter, and warns of each certificate that is not valid
    /// at `now`.
    pub fn loaded(&self, owner: &str, file: &PemFile, now: SystemTime) {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            });
        // The settings were built from this file: its certificates parse as PEM; one that
        // x509-parser cannot read is left out of the dates.
        let Ok(chain) = file.certificates() else {
            return;
        };
        let mut first_not_after = None::<i64>;
        for der in &chain {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let validity = cert.validity();
            let not_after = validity.not_after.timestamp();
            first_not_after = Some(first_not_after.map_or(not_after, |first| first.min(not_after)));
            let problem = if now > not_after {
                "has expired"
            } else if now < validity.not_before.timestamp() {
                "is not valid yet"
            } else {
                continue;
            };
            tracing::warn!(
                owner,
                file = %file.path().display(),
                certificate = %name(der),
                not_before = %validity.not_before,
                not_after = %validity.not_after,
                "a TLS certificate the proxy presents {problem}; it is served all the same"
            );
        }
        if let Some(first) = first_not_after {
            self.not_after.set(first);
        }
    }
}

/// What a certificate is called: its subject, else its first subject alternative name (mesh
/// certificates have an empty subject and a SPIFFE id).
fn name(der: &[u8]) -> String {
    peer_identity(der)
        .and_then(|identity| {
            let subject = identity.subject.clone();
            subject.or_else(|| identity.names().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "(no name)".to_owned())
}
