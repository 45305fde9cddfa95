//! The files codecs take contents from (a bRPC cluster's `authentication_data_file`),
//! re-read while their codec factory lives, so that a file rotated in place (rewritten, or
//! replaced by rename or a symlink swap) reaches the connections opened after.
//!
//! Each is looked at as TLS certificates are ([`crate::transport::tls`]): every
//! [`RELOAD_INTERVAL`] its metadata only, and read when that changed (or changed too recently
//! to show the next change). Contents that fail the codec's check, or a file gone or
//! unreadable, keep the last good contents: the failure is logged and counted once, not at
//! every look while it lasts.

use std::sync::Arc;

use metaprotocol_core::{CodecFactory, Reloaded, WeakWatchedFile};

use crate::file_stamp::{Look, RELOAD_INTERVAL, look_every};
use crate::stats::{Counter, MetricsScope};

/// Watches the files `factory`'s codecs take contents from, while it lives (on a runtime;
/// otherwise they keep what they first read). Reloads are counted in `scope`.
pub(crate) fn watch(factory: &Arc<dyn CodecFactory>, scope: &MetricsScope) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for file in factory.watched_files() {
        let reloads = |outcome| {
            scope.counter_with(
                "codec_file_reloads",
                "Files named by codec options re-read after they changed on disk, by outcome",
                &[("option", file.option()), ("outcome", outcome)],
            )
        };
        let watch = Watch {
            file: file.downgrade(),
            applied: reloads("applied"),
            rejected: reloads("rejected"),
        };
        // No look yet: the first one reads the file, whatever changed since the codec did.
        let seen = Seen {
            look: None,
            failure: None,
        };
        runtime.spawn(look_every(RELOAD_INTERVAL, seen, move |seen| {
            watch.refresh(seen)
        }));
    }
}

/// One watched file.
struct Watch {
    file: WeakWatchedFile,
    applied: Counter,
    rejected: Counter,
}

/// What the watch knows of its file.
struct Seen {
    /// Its metadata at the last look.
    look: Option<Look>,
    /// Why it was last refused, while it is (reported once, not at every look).
    failure: Option<String>,
}

impl Watch {
    /// Re-reads the file if it may have changed since `seen`; `None` once its factory is gone.
    fn refresh(&self, seen: Seen) -> Option<Seen> {
        let file = self.file.upgrade()?;
        let look = Look::at([file.path()]);
        if seen
            .look
            .as_ref()
            .is_some_and(|seen| !look.may_differ_from(seen))
        {
            return Some(Seen {
                look: Some(look),
                ..seen
            });
        }
        let failure = match file.reload() {
            Reloaded::Unchanged => None,
            Reloaded::Applied => {
                self.applied.inc();
                tracing::info!(option = file.option(), path = %file.path().display(), "codec file reloaded; new connections use its contents");
                None
            }
            Reloaded::Kept(reason) => {
                if seen.failure.as_ref() != Some(&reason) {
                    self.rejected.inc();
                    tracing::warn!(option = file.option(), error = %reason, "changed codec file rejected; its last good contents stay");
                }
                Some(reason)
            }
        };
        Some(Seen {
            look: Some(look),
            failure,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use metaprotocol_core::{Codec, CodecOptions, Side, WatchedFile, WireVariant};

    use super::*;
    use crate::stats::Metrics;

    /// A protocol whose factory only reads a file.
    struct Reading(WatchedFile);

    impl CodecFactory for Reading {
        fn protocol(&self) -> &'static str {
            "reading"
        }

        fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
            unimplemented!("never called: only the file is watched")
        }

        fn watched_files(&self) -> Vec<WatchedFile> {
            vec![self.0.clone()]
        }
    }

    /// A factory's file is re-read while the factory lives, and neither the watch nor the
    /// metrics keep it once the factory is gone (a cluster removed, or its codec rebuilt).
    #[tokio::test]
    async fn a_factorys_file_is_watched_while_it_lives() -> Result<(), Box<dyn std::error::Error>> {
        let path = std::env::temp_dir().join(format!(
            "metaprotocol-router-{}-watched.token",
            std::process::id()
        ));
        std::fs::write(&path, "one")?;
        let mut options = CodecOptions::default();
        options.insert("token_file", path.to_string_lossy());
        let check = Box::new(|bytes: &[u8]| Ok(Bytes::copy_from_slice(bytes)));
        let file = options
            .watched_file("token_file", check)?
            .ok_or("no file")?;
        let factory: Arc<dyn CodecFactory> = Arc::new(Reading(file.clone()));
        let metrics = Metrics::new();
        metrics.watch_codec(&factory);
        watch(&factory, &metrics.root());
        std::fs::write(&path, "two")?;
        let since = Instant::now();
        while file.current() != "two" {
            assert!(since.elapsed() < Duration::from_secs(10), "not re-read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let applied =
            r#"metaprotocol_codec_file_reloads_total{option="token_file",outcome="applied"} 1"#;
        assert!(metrics.render().lines().any(|line| line == applied));
        let weak = file.downgrade();
        drop((file, factory));
        assert!(weak.upgrade().is_none(), "kept after its factory");
        std::fs::remove_file(path)?;
        Ok(())
    }
}
