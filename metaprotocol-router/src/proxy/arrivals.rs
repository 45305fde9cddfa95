//! How new files arrive at the watched config file's path, as Linux reports them. Polling
//! sees only that the path names another file; whether that file is whole takes knowing how
//! it came: renamed over a name the path goes through (written aside first: `sed -i`,
//! Ansible, a ConfigMap's `..data` swap), or created at one (vim's default write renames the
//! old file aside as a backup and writes a new one at the path), so perhaps still being
//! written.

use std::ffi::OsStr;
use std::path::Path;

use super::file_reads::{Called, FILE_READ_TIMEOUT, OneAtATime};

/// How a file last arrived at a name the watched path goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Renamed over the name: it was whole before it appeared.
    Renamed,
    /// Created at the name, or unknown (reports were lost): perhaps still being written.
    Created,
}

/// The arrivals at names in the watched path's directory (inotify on it). None are reported
/// where inotify is missing or cannot watch the directory (not Linux, or no inotify instances
/// or watches left), and a network file system reports only this machine's own changes: a new
/// file then settles as one written in place does.
#[derive(Default)]
pub(super) struct Arrivals {
    #[cfg(target_os = "linux")]
    events: Option<std::os::fd::OwnedFd>,
}

impl Arrivals {
    /// Arrivals in the directory of `path` from now on (none reported if the watch could not be
    /// set up, or not within [`FILE_READ_TIMEOUT`]). Set up on a thread of its own, not the
    /// runtime's: adding the watch looks the directory up, which waits on a network file system
    /// that is slow or unreachable.
    pub async fn watch(path: &Path) -> Self {
        let path = path.to_owned();
        match OneAtATime::default()
            .call(FILE_READ_TIMEOUT, move || Self::set_up(&path))
            .await
        {
            Called::Answered(arrivals) | Called::AnsweredLate(arrivals) => arrivals,
            Called::Unanswered | Called::Failed(_) => Self::default(),
        }
    }
}

#[cfg(target_os = "linux")]
impl Arrivals {
    /// Watches the directory of `path`.
    fn set_up(path: &Path) -> Self {
        use rustix::fs::inotify;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let watched = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .and_then(|events| {
                let arrivals = inotify::WatchFlags::CREATE | inotify::WatchFlags::MOVED_TO;
                inotify::add_watch(&events, dir, arrivals | inotify::WatchFlags::ONLYDIR)?;
                Ok(events)
            });
        match watched {
            Ok(events) => Self {
                events: Some(events),
            },
            Err(err) => {
                tracing::info!(file = %path.display(), error = %err, "config file watched without file events: a new file at its path is applied once it settles");
                Self { events: None }
            }
        }
    }

    /// The last arrival reported since the last call at any of `names` (`None`: none there).
    pub fn latest(&self, names: &[&OsStr]) -> Option<Arrival> {
        use rustix::fs::inotify::{ReadFlags, Reader};
        use std::os::unix::ffi::OsStrExt;
        let events = self.events.as_ref()?;
        let mut buffer = [std::mem::MaybeUninit::uninit(); 4096];
        let mut reader = Reader::new(events, &mut buffer);
        let at = |name: &[u8]| names.iter().any(|of| of.as_bytes() == name);
        let mut latest = None;
        loop {
            match reader.next() {
                Ok(event) => {
                    let flags = event.events();
                    // What was lost may have come after anything read before.
                    if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                        latest = Some(Arrival::Created);
                    }
                    if !event.file_name().is_some_and(|name| at(name.to_bytes())) {
                        continue;
                    }
                    if flags.contains(ReadFlags::MOVED_TO) {
                        latest = Some(Arrival::Renamed);
                    } else if flags.contains(ReadFlags::CREATE) {
                        latest = Some(Arrival::Created);
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => return latest,
                // Unreadable: whatever arrived is unknown.
                Err(_) => return Some(Arrival::Created),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Arrivals {
    /// Nothing reports arrivals here.
    fn set_up(_: &Path) -> Self {
        Self {}
    }

    /// Always `None`: nothing reports arrivals here.
    pub fn latest(&self, _: &[&OsStr]) -> Option<Arrival> {
        None
    }
}
