//! TLS settings that follow their files: a [`Reloading`] holds the settings built from some
//! certificate and key files and rebuilds them when the files' contents change, so that rotated
//! certificates (cert-manager, Istio's agent, a ConfigMap replaced by rename) take effect on
//! the next handshake. Connections already open keep the settings they were made with.

use std::hash::{DefaultHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ConfigError;
use crate::stats::Counter;
use crate::stats::MetricsScope;

/// How often the files are looked at.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the settings from the files (reading them again).
pub(crate) type Build<T> = Box<dyn Fn() -> Result<T, ConfigError> + Send + Sync>;

/// Settings built from files, rebuilt when the files change.
pub(crate) struct Reloading<T> {
    current: ArcSwap<T>,
    files: Vec<PathBuf>,
    build: Build<T>,
    /// Who the settings are for, in logs (`listener in`, `cluster backend`).
    owner: String,
    applied: Counter,
    rejected: Counter,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the settings from `files` (those given) with `build` (an error is the config's),
    /// and, on a runtime, watches the files until the returned value is dropped. Reloads are
    /// counted in `scope`.
    pub fn start<'a>(
        files: impl IntoIterator<Item = Option<&'a PathBuf>>,
        build: Build<T>,
        owner: String,
        scope: &MetricsScope,
    ) -> Result<Arc<Self>, ConfigError> {
        let files: Vec<PathBuf> = files.into_iter().flatten().cloned().collect();
        let seen = fingerprint(&files);
        let first = build()?;
        let reloads = |outcome| {
            scope.counter_with(
                "tls_certificate_reloads",
                "Certificate files re-read after they changed on disk, by outcome",
                &[("outcome", outcome)],
            )
        };
        let this = Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            files,
            build,
            owner,
            applied: reloads("applied"),
            rejected: reloads("rejected"),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch(Arc::downgrade(&this), seen));
        }
        Ok(this)
    }

    /// The settings for a new connection.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds the settings if the files changed since `seen`; returns what they are now.
    fn refresh(&self, seen: Option<u64>) -> Option<u64> {
        let now = fingerprint(&self.files);
        if now == seen {
            return seen;
        }
        match (self.build)() {
            Ok(settings) => {
                self.current.store(Arc::new(settings));
                self.applied.inc();
                tracing::info!(owner = %self.owner, "TLS certificates reloaded");
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

/// Looks at the files every [`RELOAD_INTERVAL`] while the settings live.
async fn watch<T: Send + Sync + 'static>(this: Weak<Reloading<T>>, mut seen: Option<u64>) {
    let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(reloading) = this.upgrade() else {
            return;
        };
        // File reads and parsing block: off the runtime's workers.
        match tokio::task::spawn_blocking(move || reloading.refresh(seen)).await {
            Ok(now) => seen = now,
            Err(_) => return,
        }
    }
}

/// A hash of the files' contents; `None` if one cannot be read.
fn fingerprint(files: &[PathBuf]) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    for file in files {
        hasher.write(&std::fs::read(file).ok()?);
        hasher.write_u8(0);
    }
    Some(hasher.finish())
}
