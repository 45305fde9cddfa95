//! The dates of the certificates the proxy presents (a listener's `cert_file`, a cluster's
//! client certificate) and of the CA roots it trusts (`client_ca_file`, `ca_file`).
//!
//! A certificate out of its validity (expired, or not yet valid) is served all the same:
//! refusing it would turn a renewal that is late into an outage of everything behind the
//! listener, or to the cluster, where clients that check dates refuse it anyway and those that
//! do not (or whose clocks differ from ours) go on working. The presented chain's first
//! notAfter is a gauge, so that an alert can fire well before it comes; and the log warns of
//! each certificate, presented or trusted, that expires within [`SOON`], has expired, or is
//! not valid yet: when it is loaded, again each time it comes closer to its end (within
//! [`SOON`], a week, a day; expired), and otherwise once a day while it stays so. A proxy that
//! runs for months is thus told, not only one that restarts.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::metrics::gauge::Gauge;

use super::identity::peer_identity;
use super::pem::PemFile;
use crate::stats::MetricsScope;

const DAY: i64 = 86_400;

/// How long before its end a certificate is warned of.
const SOON: i64 = 30 * DAY;

/// How often a certificate whose concern does not change is warned of again.
const REPEAT: i64 = DAY;

/// What is wrong with a certificate's dates at some time, from least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Concern {
    /// It expires within [`SOON`].
    Soon,
    /// It expires within a week.
    Week,
    /// It expires within a day.
    Day,
    /// It is not valid yet.
    Early,
    /// It has expired.
    Expired,
}

impl Concern {
    /// The concern of dates `not_before`..`not_after` at `now` (Unix seconds), if any.
    fn at(now: i64, not_before: i64, not_after: i64) -> Option<Self> {
        let left = not_after - now;
        Some(if left < 0 {
            Self::Expired
        } else if now < not_before {
            Self::Early
        } else if left < DAY {
            Self::Day
        } else if left < 7 * DAY {
            Self::Week
        } else if left < SOON {
            Self::Soon
        } else {
            return None;
        })
    }

    fn says(self) -> &'static str {
        match self {
            Self::Soon => "expires within 30 days",
            Self::Week => "expires within a week",
            Self::Day => "expires within a day",
            Self::Early => "is not valid yet",
            Self::Expired => "has expired",
        }
    }
}

/// One certificate whose dates are watched.
struct Dated {
    /// The file it was read from.
    file: PathBuf,
    /// Its subject (or first name).
    name: String,
    /// True for a CA root the proxy trusts, false for one it presents.
    trusted: bool,
    not_before: i64,
    not_after: i64,
    /// What it was last warned of, and when (Unix seconds).
    warned: Option<(Concern, i64)>,
}

impl Dated {
    /// Warns of it for `owner` if its dates call for it at `now`: first of each concern at
    /// once, the same one again only after [`REPEAT`].
    fn check(&mut self, owner: &str, now: i64) {
        let Some(concern) = Concern::at(now, self.not_before, self.not_after) else {
            self.warned = None;
            return;
        };
        if let Some((warned, at)) = self.warned
            && warned == concern
            && now - at < REPEAT
        {
            return;
        }
        self.warned = Some((concern, now));
        let (what, served) = if self.trusted {
            ("a CA root the proxy trusts", "it is trusted all the same")
        } else {
            (
                "a TLS certificate the proxy presents",
                "it is served all the same",
            )
        };
        tracing::warn!(
            owner,
            file = %self.file.display(),
            certificate = %self.name,
            not_before = %timestamp(self.not_before),
            not_after = %timestamp(self.not_after),
            "{what} {}; {served}",
            concern.says()
        );
    }
}

/// The gauge of the presented chain's first notAfter, in `scope`.
fn not_after_gauge(scope: &MetricsScope) -> Gauge {
    scope.gauge(
        "tls_certificate_expiry_timestamp_seconds",
        "When the first certificate of the chain the proxy presents expires (its notAfter), in seconds since the Unix epoch",
    )
}

/// Watches the dates of the certificates one set of TLS settings presents and trusts: a gauge
/// of the presented chain's first notAfter, warnings about certificates near or out of their
/// validity.
pub(crate) struct Expiry {
    /// `None` when the settings present no chain.
    not_after: Option<Gauge>,
    certificates: Mutex<Vec<Dated>>,
}

impl Expiry {
    /// The gauge lives in `scope` (the listener's or cluster's), if the settings `present` a
    /// chain.
    pub fn new(scope: &MetricsScope, present: bool) -> Self {
        Self {
            not_after: present.then(|| not_after_gauge(scope)),
            certificates: Mutex::new(Vec::new()),
        }
    }

    /// Holds its series in `scope` too (a listener's next context, which keeps these settings),
    /// so that they outlive the scope they were made in.
    pub fn hold_series(&self, scope: &MetricsScope) {
        if self.not_after.is_some() {
            not_after_gauge(scope);
        }
    }

    /// Takes the certificates of `presented` (the chain, when the settings present one) and
    /// `trusted` (CA bundles), just loaded for `owner` (`listener in`), as those to watch: sets
    /// the gauge to the chain's first notAfter, and warns of each certificate whose dates call
    /// for it at `now`.
    pub fn loaded<'a>(
        &self,
        owner: &str,
        presented: Option<&PemFile>,
        trusted: impl IntoIterator<Item = &'a PemFile>,
        now: SystemTime,
    ) {
        let mut certificates = dates(presented, false);
        let first = certificates.iter().map(|dated| dated.not_after).min();
        if let (Some(gauge), Some(first)) = (&self.not_after, first) {
            gauge.set(first);
        }
        for file in trusted {
            certificates.extend(dates(Some(file), true));
        }
        let mut watched = match self.certificates.lock() {
            Ok(watched) => watched,
            Err(poisoned) => poisoned.into_inner(),
        };
        *watched = certificates;
        drop(watched);
        self.check(owner, now);
    }

    /// Warns of each watched certificate whose dates call for it at `now` (see the module's
    /// docs); called at every look at the files.
    pub fn check(&self, owner: &str, now: SystemTime) {
        let now = unix_seconds(now);
        let mut watched = match self.certificates.lock() {
            Ok(watched) => watched,
            Err(poisoned) => poisoned.into_inner(),
        };
        for dated in watched.iter_mut() {
            dated.check(owner, now);
        }
    }
}

/// The dates of the certificates of `file`, if any: a chain's, or a CA bundle's when
/// `trusted` (read as the settings read it); one that x509-parser cannot read is left out.
fn dates(file: Option<&PemFile>, trusted: bool) -> Vec<Dated> {
    let Some(file) = file else {
        return Vec::new();
    };
    let certificates = if trusted {
        file.bundle()
            .map(|bundle| bundle.authorities.iter().map(|a| a.der().clone()).collect())
    } else {
        file.certificates()
    };
    let Ok(certificates) = certificates else {
        return Vec::new();
    };
    certificates
        .iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let validity = cert.validity();
            Some(Dated {
                file: file.path().to_owned(),
                name: name(der),
                trusted,
                not_before: validity.not_before.timestamp(),
                not_after: validity.not_after.timestamp(),
                warned: None,
            })
        })
        .collect()
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// `seconds` since the Unix epoch, as RFC 3339.
fn timestamp(seconds: i64) -> String {
    let time = u64::try_from(seconds)
        .map(|seconds| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time).to_string()
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
