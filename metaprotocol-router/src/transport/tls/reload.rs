//! TLS settings that follow their files: a [`Reloading`] holds the settings built from some
//! certificate and key files and rebuilds them when the files' contents change, so that rotated
//! certificates (cert-manager, Istio's agent, a Kubernetes secret volume swapping its `..data`
//! symlink, a ConfigMap replaced by rename) take effect on the next handshake. Connections
//! already open keep the settings they were made with.
//!
//! Every [`RELOAD_INTERVAL`] the watcher looks at the files' metadata only (through symlinks:
//! device and inode, size, modification and change times to the nanosecond), and reads them
//! only when that changed: a proxy with hundreds of TLS clusters does not read and hash their
//! keys every second. A file replaced (by rename, or a symlink swapped to a new one) is another
//! inode; one written in place gets a new change time, which no tool can set back.
//!
//! Except within one tick of the file system's clock: timestamps advance by the kernel's coarse
//! clock (a few milliseconds; a second or two on some file systems), so a second write of the
//! same size in the tick of a first one the watcher has already read leaves the metadata as it
//! was. Files are therefore not trusted to show their next change until their last change is
//! [`SETTLE`](crate::file_stamp::SETTLE) old: while it is younger, each look reads them again
//! (and rebuilds only if their contents differ). The cost is a few reads after each change; the
//! gain, that no write is missed, however fast the writer.

use std::hash::{DefaultHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::expiry::Expiry;
use super::pem::PemFile;
use crate::config::ConfigError;
use crate::file_stamp::{Look, RELOAD_INTERVAL, look_every};
use crate::stats::Counter;
use crate::stats::MetricsScope;

/// The config field of the certificate chain the proxy presents, on listeners and clusters
/// alike.
const PRESENTED: &str = "cert_file";

/// The config fields of the CA bundles the settings trust, on listeners and clusters.
const TRUSTED: [&str; 2] = ["client_ca_file", "ca_file"];

/// Builds the settings from the files' contents.
pub(crate) type Build<T> = Box<dyn Fn(&Files) -> Result<T, ConfigError> + Send + Sync>;

/// A file the settings are built from: the config field that names it, and its path.
type Source = (&'static str, PathBuf);

/// The files the settings are built from, read together.
pub(crate) struct Files(Vec<PemFile>);

impl Files {
    fn read(sources: &[Source]) -> Result<Self, ConfigError> {
        sources
            .iter()
            .map(|(field, path)| PemFile::read(field, path))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The file named by config field `field`; an error if the settings have none.
    pub fn get(&self, field: &str) -> Result<&PemFile, ConfigError> {
        self.0
            .iter()
            .find(|file| file.field() == field)
            .ok_or_else(|| ConfigError::new(field, "no file given"))
    }

    /// Every file named by config field `field` (a list's items).
    pub fn all<'a>(&'a self, field: &'a str) -> impl Iterator<Item = &'a PemFile> {
        self.0.iter().filter(move |file| file.field() == field)
    }

    /// Gives `expiry` the certificates just loaded for `owner`: the chain presented and the
    /// CA roots trusted.
    fn dates_loaded(&self, expiry: &Expiry, owner: &str) {
        let trusted = TRUSTED.iter().flat_map(|field| self.all(field));
        expiry.loaded(owner, self.get(PRESENTED).ok(), trusted, SystemTime::now());
    }

    /// A hash of the contents, to tell a change from a rewrite of the same bytes.
    fn hash(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for file in &self.0 {
            hasher.write(file.bytes());
            hasher.write_u8(0);
        }
        hasher.finish()
    }
}

/// What the watcher knows of the files.
struct Seen {
    /// Their metadata at the last look.
    look: Look,
    /// A hash of their contents when last read, or why they could not be read (a failure is
    /// reported once, not at every look while it lasts).
    contents: Result<u64, String>,
}

/// Settings built from files, rebuilt when the files change.
pub(crate) struct Reloading<T> {
    current: ArcSwap<T>,
    sources: Vec<Source>,
    build: Build<T>,
    /// Who the settings are for, in logs (`listener in`, `cluster backend`).
    owner: String,
    /// The dates of the presented chain and the trusted roots.
    expiry: Expiry,
    applied: Counter,
    rejected: Counter,
}

/// The counters of reloads applied and rejected, in `scope`.
fn reload_counters(scope: &MetricsScope) -> (Counter, Counter) {
    let reloads = |outcome| {
        scope.counter_with(
            "tls_certificate_reloads",
            "Certificate files re-read after they changed on disk, by outcome",
            &[("outcome", outcome)],
        )
    };
    (reloads("applied"), reloads("rejected"))
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the settings with `build` from `files` (those given, each with the config field
    /// that names it; an error is the config's), and, on a runtime, watches the files until the
    /// returned value is dropped. Reloads are counted in `scope`.
    pub fn start<'a>(
        files: impl IntoIterator<Item = (&'static str, &'a PathBuf)>,
        build: Build<T>,
        owner: String,
        scope: &MetricsScope,
    ) -> Result<Arc<Self>, ConfigError> {
        let sources: Vec<Source> = files
            .into_iter()
            .map(|(field, path)| (field, path.clone()))
            .collect();
        let look = Look::at(sources.iter().map(|(_, path)| path.as_path()));
        let files = Files::read(&sources)?;
        let first = build(&files)?;
        let expiry = Expiry::new(scope, files.get(PRESENTED).is_ok());
        files.dates_loaded(&expiry, &owner);
        let seen = Seen {
            look,
            contents: Ok(files.hash()),
        };
        let (applied, rejected) = reload_counters(scope);
        let this = Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            sources,
            build,
            owner,
            expiry,
            applied,
            rejected,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let this = Arc::downgrade(&this);
            runtime.spawn(look_every(RELOAD_INTERVAL, seen, move |seen| {
                Some(this.upgrade()?.refresh(seen))
            }));
        }
        Ok(this)
    }

    /// Holds its series in `scope` too (a listener's next context, which keeps these
    /// settings), so that they outlive the scope they were made in.
    pub fn hold_series(&self, scope: &MetricsScope) {
        reload_counters(scope);
        self.expiry.hold_series(scope);
    }

    /// The settings for a new connection.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds the settings if the files changed since `seen`; returns what was seen now.
    fn refresh(&self, seen: Seen) -> Seen {
        // Certificates come closer to their end while their files stay the same.
        self.expiry.check(&self.owner, SystemTime::now());
        let look = Look::at(self.sources.iter().map(|(_, path)| path.as_path()));
        if !look.may_differ_from(&seen.look) {
            return Seen {
                look,
                contents: seen.contents,
            };
        }
        let files = Files::read(&self.sources);
        let now = Seen {
            look,
            contents: files.as_ref().map(Files::hash).map_err(ToString::to_string),
        };
        if now.contents == seen.contents {
            return now;
        }
        let built = files.and_then(|files| (self.build)(&files).map(|settings| (settings, files)));
        match built {
            Ok((settings, files)) => {
                self.current.store(Arc::new(settings));
                self.applied.inc();
                tracing::info!(owner = %self.owner, "TLS certificates reloaded");
                files.dates_loaded(&self.expiry, &self.owner);
            }
            Err(err) => {
                // Files being replaced one by one can be caught half-way: the next change
                // (the last file written) is tried again.
                self.rejected.inc();
                tracing::warn!(owner = %self.owner, error = %err, "changed TLS certificate files rejected; the previous ones stay");
            }
        }
        now
    }
}
