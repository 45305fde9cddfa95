//! What a file's metadata says of its contents, for the watchers of files (the config file,
//! TLS certificates, codecs' files): looking at it costs one `stat`, where reading the file
//! costs its size.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// How old a file's last change must be for its metadata to be trusted to show the next one
/// (timestamps advance by the kernel's coarse clock: a second write in the tick of a first one
/// already read leaves them as they were): above the coarsest timestamps of the file systems
/// config and certificate files live on (ext3's second,
/// FAT's two seconds are at most two ticks of it), and short enough that the extra reads after
/// a change are few.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);

/// How often watched files (TLS certificates, codecs' files) are looked at.
pub(crate) const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What a file's metadata (through symlinks) says of its contents: which file it is, how long,
/// and when it last changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    /// The modification time, in nanoseconds since the Unix epoch.
    modified: i128,
    /// The change time (of contents or metadata; set by the kernel only), likewise.
    changed: i128,
}

impl Stamp {
    /// The stamp of `path`; `None` if it cannot be looked at (missing, say).
    pub fn of(path: &Path) -> Option<Self> {
        // Taken by an update's read-ahead, when one serves this thread (see `ReadAhead`).
        let meta = metaprotocol_core::metadata(path).ok()?;
        let nanos = |secs: i64, nsec: i64| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: nanos(meta.mtime(), meta.mtime_nsec()),
            changed: nanos(meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// True if both stamps are of the same file (device and inode), whatever its contents: a
    /// file replaced by rename, or a symlink swapped to another, is another file.
    pub fn same_file(&self, other: &Self) -> bool {
        (self.device, self.inode) == (other.device, other.inode)
    }

    /// True if the file last changed less than [`SETTLE`] before `now`, or after it (a clock
    /// set back; a network file system's clock ahead of ours).
    pub fn unsettled(&self, now: SystemTime) -> bool {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as i128);
        self.modified.max(self.changed) + SETTLE.as_nanos() as i128 > now
    }
}

/// The metadata of a set of files at one look, taken before they are read, so that a write
/// after the read shows in the next look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Look {
    /// Each file's stamp (`None`: it could not be looked at).
    stamps: Vec<Option<Stamp>>,
    /// True if a file had changed too recently for its stamp to show the next change.
    unsettled: bool,
}

impl Look {
    /// Looks at the files at `paths`.
    pub fn at<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Self {
        let now = SystemTime::now();
        let stamps: Vec<_> = paths.into_iter().map(Stamp::of).collect();
        Self {
            unsettled: stamps.iter().flatten().any(|stamp| stamp.unsettled(now)),
            stamps,
        }
    }

    /// True if the files may hold other contents than at `earlier` (a look at the same paths):
    /// their metadata changed, or had changed too recently then to show a change since.
    pub fn may_differ_from(&self, earlier: &Self) -> bool {
        self.stamps != earlier.stamps || earlier.unsettled
    }
}

/// The files an update read, and how they looked just before it read them: a config rejected
/// for one of them is tried again once any may hold other contents
/// ([`Look::may_differ_from`]), not before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FilesLooked {
    pub paths: Vec<std::path::PathBuf>,
    pub look: Look,
}

impl FilesLooked {
    /// True if one of the files may hold other contents than when they were read (looked at
    /// again now: call it off the runtime's workers).
    pub fn may_have_changed(&self) -> bool {
        Look::at(self.paths.iter().map(std::path::PathBuf::as_path)).may_differ_from(&self.look)
    }
}

/// Runs `look` on a blocking thread (looking at files and reading them block) every
/// `interval`, the first an interval from now, each with what the one before returned, until
/// one returns `None`.
pub(crate) async fn look_every<S: Send + 'static>(
    interval: Duration,
    mut seen: S,
    look: impl Fn(S) -> Option<S> + Send + Sync + 'static,
) {
    let look = std::sync::Arc::new(look);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let look = look.clone();
        match tokio::task::spawn_blocking(move || look(seen)).await {
            Ok(Some(now)) => seen = now,
            Ok(None) | Err(_) => return,
        }
    }
}
