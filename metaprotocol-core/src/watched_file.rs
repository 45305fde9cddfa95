//! A file a codec takes some of its configuration from (a cluster's credentials), kept as it
//! is on disk while the proxy runs.
//!
//! A codec's constructor opens one with [`CodecOptions::watched_file`](crate::CodecOptions)
//! and hands it out through [`CodecFactory::watched_files`](crate::CodecFactory): the engine
//! looks at the file while the factory lives and calls [`WatchedFile::reload`] when it may have
//! changed. The codec reads [`WatchedFile::current`] as it opens a connection, never per call.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use bytes::Bytes;

/// The most bytes a watched file may hold: far more than any credentials or token, far below
/// what would strain memory.
pub const MAX_WATCHED_FILE_BYTES: u64 = 1 << 20;

/// Checks a watched file's contents and gives what the codec keeps of them (trimmed, say), or
/// says why they are refused.
pub type FileCheck = Box<dyn Fn(&[u8]) -> Result<Bytes, String> + Send + Sync>;

/// A file named by a codec option, with the last contents that passed its check. Clones share
/// the contents.
#[derive(Clone)]
pub struct WatchedFile {
    shared: Arc<Shared>,
}

struct Shared {
    option: String,
    path: PathBuf,
    check: FileCheck,
    current: RwLock<Bytes>,
}

/// A [`WatchedFile`] that does not keep it alive: the engine's watch holds this, and ends once
/// the codec factory that owned the file is gone.
#[derive(Clone, Debug)]
pub struct WeakWatchedFile(Weak<Shared>);

/// What [`WatchedFile::reload`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The file holds what was kept: nothing changed.
    Unchanged,
    /// New contents passed the check; new connections take them.
    Applied,
    /// The file could not be read or its contents failed the check (the reason); the last
    /// good contents stay.
    Kept(String),
}

impl WatchedFile {
    /// Reads `path`, named by codec option `option`, and checks it; the reason if either
    /// fails.
    pub(crate) fn open(option: &str, path: &Path, check: FileCheck) -> Result<Self, String> {
        let first = check(&read(path)?)?;
        Ok(Self {
            shared: Arc::new(Shared {
                option: option.to_owned(),
                path: path.to_owned(),
                check,
                current: RwLock::new(first),
            }),
        })
    }

    /// The contents last read that passed the check.
    pub fn current(&self) -> Bytes {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The codec option that names the file.
    pub fn option(&self) -> &str {
        &self.shared.option
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Reads the file again (it blocks: call it off an async runtime's workers). Contents that
    /// pass the check replace the current ones; a file that is gone, unreadable or refused
    /// leaves them as they were.
    pub fn reload(&self) -> Reloaded {
        let checked = read(&self.shared.path).and_then(|bytes| (self.shared.check)(&bytes));
        let fresh = match checked {
            Ok(fresh) => fresh,
            Err(reason) => return Reloaded::Kept(reason),
        };
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *current == fresh {
            return Reloaded::Unchanged;
        }
        *current = fresh;
        Reloaded::Applied
    }

    /// A handle that does not keep the file's contents alive.
    pub fn downgrade(&self) -> WeakWatchedFile {
        WeakWatchedFile(Arc::downgrade(&self.shared))
    }
}

impl WeakWatchedFile {
    /// The file, while something else still holds it.
    pub fn upgrade(&self) -> Option<WatchedFile> {
        self.0.upgrade().map(|shared| WatchedFile { shared })
    }
}

/// Shows the option and path, never the contents (credentials).
impl fmt::Debug for WatchedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedFile")
            .field("option", &self.shared.option)
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `path`'s contents: a regular file (after symlinks) of at most [`MAX_WATCHED_FILE_BYTES`].
fn read(path: &Path) -> Result<Vec<u8>, String> {
    read_regular_file(path, MAX_WATCHED_FILE_BYTES).map_err(|why| refuse(path, &why))
}

/// The contents of `path`, a regular file (after symlinks) of at most `max_bytes`, or why not,
/// in words that follow "cannot be read: " (`it is a FIFO, not a regular file`). Anything else
/// is refused without waiting or reading it whole: opening a FIFO waits for a writer, and a
/// device (`/dev/zero`) never ends. For files a proxy takes its settings from while it runs
/// (credentials, certificates), which may be replaced under it at any time. On a thread a
/// [`ReadAhead`](crate::ReadAhead) serves, what it read of the file.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    crate::read_ahead::regular_served(path, max_bytes)
        .unwrap_or_else(|| read_regular_file_now(path, max_bytes))
}

/// [`read_regular_file`], from the file itself.
pub(crate) fn read_regular_file_now(path: &Path, max_bytes: u64) -> Result<Vec<u8>, String> {
    // Looked at before it is opened, so that a device is not even opened; then judged again by
    // what was opened (see `open_regular`).
    fits(
        &std::fs::metadata(path).map_err(|err| err.to_string())?,
        max_bytes,
    )?;
    let file = open_regular(path, max_bytes)?;
    let mut bytes = Vec::new();
    // One byte more than the bound tells a file that grew past it since it was looked at.
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(bytes)
}

/// `path` opened for reading, if what was opened is a regular file of at most `max_bytes`. The
/// path may name something else by now than when it was looked at (a FIFO renamed over it,
/// say), so it is opened without waiting (a FIFO's blocking open would hold the reading thread
/// until a writer came) and the handle is judged, not the path. On a regular file the flag
/// changes nothing.
fn open_regular(path: &Path, max_bytes: u64) -> Result<File, String> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(|err| err.to_string())?;
    fits(&file.metadata().map_err(|err| err.to_string())?, max_bytes)?;
    Ok(file)
}

/// Why a file of `meta` is not read, if it is not: what it is when it is no regular file.
fn fits(meta: &std::fs::Metadata, max_bytes: u64) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_file() {
        if meta.len() > max_bytes {
            return Err(too_large(max_bytes));
        }
        return Ok(());
    }
    Err(format!("it is {}, not a regular file", kind_of(kind)))
}

/// What a file that is not a regular file is, in words.
fn kind_of(kind: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() || kind.is_block_device() {
            return "a device";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "no regular file"
    }
}

/// Why a file past `max_bytes` is refused, the bound in the largest unit that writes it whole
/// (`it is larger than 4 KiB`).
pub(crate) fn too_large(max_bytes: u64) -> String {
    let bound = match max_bytes {
        0 => "0 bytes".to_owned(),
        mib if mib % (1 << 20) == 0 => format!("{} MiB", mib >> 20),
        kib if kib % (1 << 10) == 0 => format!("{} KiB", kib >> 10),
        bytes => format!("{bytes} bytes"),
    };
    format!("it is larger than {bound}")
}

fn refuse(path: &Path, why: &str) -> String {
    format!("`{}` cannot be read: {why}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `content` in the temp dir, for this process.
    fn file(name: &str, content: &[u8]) -> std::io::Result<PathBuf> {
        let path = std::env::temp_dir().join(format!(
            "metaprotocol-core-{}-{name}.watched",
            std::process::id()
        ));
        std::fs::write(&path, content)?;
        Ok(path)
    }

    /// Trimmed, and refused when empty.
    fn nonempty() -> FileCheck {
        Box::new(|bytes| match bytes.trim_ascii_end() {
            [] => Err("holds nothing".to_owned()),
            kept => Ok(Bytes::copy_from_slice(kept)),
        })
    }

    /// A rotated file's new contents replace the current ones; a file that vanishes, or is
    /// rewritten with what the check refuses, keeps the last good contents, and returns once
    /// it is good again. Holders of a clone see the same contents.
    #[test]
    fn a_watched_file_keeps_its_last_good_contents() -> Result<(), Box<dyn std::error::Error>> {
        let path = file("rotated", b"first\n")?;
        let watched = WatchedFile::open("token_file", &path, nonempty())?;
        let held = watched.clone();
        assert_eq!(&held.current()[..], b"first");
        assert_eq!(watched.reload(), Reloaded::Unchanged);
        std::fs::write(&path, b"second\n")?;
        assert_eq!(watched.reload(), Reloaded::Applied);
        assert_eq!(&held.current()[..], b"second");
        std::fs::write(&path, b"\n")?;
        assert_eq!(watched.reload(), Reloaded::Kept("holds nothing".to_owned()));
        std::fs::remove_file(&path)?;
        let Reloaded::Kept(reason) = watched.reload() else {
            panic!("a missing file was read");
        };
        assert!(reason.contains("cannot be read"), "{reason}");
        assert_eq!(&held.current()[..], b"second");
        std::fs::write(&path, b"third")?;
        assert_eq!(watched.reload(), Reloaded::Applied);
        assert_eq!(&held.current()[..], b"third");
        assert!(
            !format!("{watched:?}").contains("third"),
            "no contents in logs"
        );
        let weak = watched.downgrade();
        drop((watched, held));
        assert!(weak.upgrade().is_none());
        std::fs::remove_file(&path)?;
        Ok(())
    }

    /// A FIFO renamed over the file after it was looked at and before it is opened is refused
    /// without waiting for a writer. The rename is not timed here: the open that such a race
    /// reaches is made on a FIFO directly, on a thread of its own, so that an open that waits
    /// fails the test (and is released after).
    #[cfg(unix)]
    #[test]
    fn a_fifo_met_at_the_open_is_refused_without_waiting() -> Result<(), Box<dyn std::error::Error>>
    {
        let fifo = std::env::temp_dir().join(format!(
            "metaprotocol-core-{}-swapped.fifo",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
        assert!(made.success(), "mkfifo");
        let (done, opened) = std::sync::mpsc::channel();
        {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let _ = done.send(open_regular(&fifo, MAX_WATCHED_FILE_BYTES).map(drop));
            });
        }
        let outcome = opened.recv_timeout(std::time::Duration::from_secs(10));
        if outcome.is_err() {
            // Opening a FIFO for reading and writing does not wait (Linux); the waiting open
            // completes with it, and its thread ends.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo);
        }
        std::fs::remove_file(&fifo)?;
        let Ok(Err(reason)) = outcome else {
            panic!("the open waited for a writer or took the FIFO: {outcome:?}");
        };
        assert!(reason.contains("not a regular file"), "{reason}");
        Ok(())
    }

    /// Only a regular file within the bound is read.
    #[test]
    fn only_a_regular_file_within_the_bound_is_read() -> std::io::Result<()> {
        let dir = std::env::temp_dir();
        let reason = WatchedFile::open("token_file", &dir, nonempty()).err();
        assert!(reason.unwrap_or_default().contains("not a regular file"));
        let large = file("large", &vec![b'x'; MAX_WATCHED_FILE_BYTES as usize + 1])?;
        let reason = WatchedFile::open("token_file", &large, nonempty()).err();
        assert!(reason.unwrap_or_default().contains("larger than 1 MiB"));
        std::fs::remove_file(large)
    }
}
