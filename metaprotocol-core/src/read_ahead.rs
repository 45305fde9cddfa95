//! Files read ahead of the code that takes them, so that a build that must not wait (a config
//! update building on an async runtime's thread) finds them read.
//!
//! A read can wait without end (a network file system that does not answer, a FIFO nothing
//! writes to), so whoever builds reads the files a build will take on a thread of their own,
//! waits for that as long as they choose, and then runs the build with what was read
//! ([`ReadAhead::serve`]): [`read_regular_file`](crate::read_regular_file), [`read_whole`] and [`metadata`] answer from it
//! on the build's thread, exactly as they would have answered reading the file then (the same
//! contents, or the same error). A file not read ahead is read as it is asked for.
//!
//! Every read is bounded by its caller's cap: a config naming a huge file, or a device that
//! never ends (`/dev/zero`), makes the proxy read no more than the cap and a byte.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::watched_file::{read_regular_file_now, too_large};

/// How a file is read: what [`read_regular_file`](crate::read_regular_file) or [`read_whole`] does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadKind {
    /// [`read_regular_file`](crate::read_regular_file) with this bound: a regular file, never waited for.
    Regular {
        /// The most bytes it may hold.
        max_bytes: u64,
    },
    /// [`read_whole`] with this bound: whatever the path names, read to its end.
    Whole {
        /// The most bytes it may hold.
        max_bytes: u64,
    },
}

/// An I/O error kept to be given again: [`io::Error`] cannot be cloned, and a file read ahead
/// may be taken by several parts of a build (one certificate for two listeners).
#[derive(Clone, Debug)]
struct KeptError {
    os: Option<i32>,
    kind: io::ErrorKind,
    text: String,
}

impl KeptError {
    fn of(err: &io::Error) -> Self {
        Self {
            os: err.raw_os_error(),
            kind: err.kind(),
            text: err.to_string(),
        }
    }

    /// The error again, displayed as the first was.
    fn error(&self) -> io::Error {
        match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.text.clone()),
        }
    }
}

/// Files read, and their metadata looked at just before, to be served to a build.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Each file's contents, or why it could not be read (for [`ReadKind::Regular`], the
    /// error's text alone, as [`read_regular_file`](crate::read_regular_file) gives it).
    reads: HashMap<(PathBuf, ReadKind), Result<Vec<u8>, KeptError>>,
    metadata: HashMap<PathBuf, Result<Metadata, KeptError>>,
}

thread_local! {
    /// The files served to the build running on this thread.
    static SERVED: RefCell<Option<Arc<ReadAhead>>> = const { RefCell::new(None) };
}

impl ReadAhead {
    /// Nothing read yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks at `path`'s metadata, then reads it as `kind` says, and keeps both (it blocks:
    /// call it off an async runtime's threads). A file already read this way is not read again.
    pub fn read(&mut self, path: &Path, kind: ReadKind) {
        let key = (path.to_owned(), kind);
        if self.reads.contains_key(&key) {
            return;
        }
        // Looked at before the read, as a watcher does: a write after the read shows in its
        // next look.
        if !self.metadata.contains_key(path) {
            let looked = std::fs::metadata(path).map_err(|err| KeptError::of(&err));
            self.metadata.insert(path.to_owned(), looked);
        }
        let read = match kind {
            ReadKind::Regular { max_bytes } => {
                read_regular_file_now(path, max_bytes).map_err(|why| KeptError {
                    os: None,
                    kind: io::ErrorKind::Other,
                    text: why,
                })
            }
            ReadKind::Whole { max_bytes } => {
                read_whole_now(path, max_bytes).map_err(|err| KeptError::of(&err))
            }
        };
        self.reads.insert(key, read);
    }

    /// Runs `build` with these files served to it on this thread.
    pub fn serve<T>(self: &Arc<Self>, build: impl FnOnce() -> T) -> T {
        /// Puts back what was served before, however `build` ends.
        struct Restore(Option<Arc<ReadAhead>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let earlier = self.0.take();
                SERVED.with(|served| *served.borrow_mut() = earlier);
            }
        }
        let earlier = SERVED.with(|served| served.borrow_mut().replace(self.clone()));
        let _restore = Restore(earlier);
        build()
    }
}

/// What the files served on this thread hold for `path` read as `kind`, if they have it.
fn served(path: &Path, kind: ReadKind) -> Option<Result<Vec<u8>, KeptError>> {
    SERVED.with(|served| {
        let served = served.borrow();
        served
            .as_ref()?
            .reads
            .get(&(path.to_owned(), kind))
            .cloned()
    })
}

/// The contents of `path` read to their end, as [`std::fs::read`] gives them (it waits for
/// what it names: a FIFO's writer, a network file system), if they are at most `max_bytes`;
/// from the files read ahead when they hold it. More is an error (`it is larger than 64 MiB`,
/// of kind [`io::ErrorKind::FileTooLarge`]): a regular file is refused by its length, unread,
/// anything else (a FIFO, a device that never ends) once it gave a byte more than the bound.
pub fn read_whole(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    match served(path, ReadKind::Whole { max_bytes }) {
        Some(read) => read.map_err(|err| err.error()),
        None => read_whole_now(path, max_bytes),
    }
}

/// [`read_whole`], from the file itself.
fn read_whole_now(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let too_large = || io::Error::new(io::ErrorKind::FileTooLarge, too_large(max_bytes));
    if meta.is_file() && meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // One byte more than the bound tells a file that grew past it, or never ends.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(bytes)
}

/// What the files served on this thread hold for [`read_regular_file`](crate::read_regular_file) of `path` with
/// `max_bytes`, if they have it.
pub(crate) fn regular_served(path: &Path, max_bytes: u64) -> Option<Result<Vec<u8>, String>> {
    served(path, ReadKind::Regular { max_bytes }).map(|read| read.map_err(|err| err.text))
}

/// `path`'s metadata (through symlinks), as [`std::fs::metadata`] gives it; from the files
/// read ahead when they looked at it.
pub fn metadata(path: &Path) -> io::Result<Metadata> {
    let kept = SERVED.with(|served| {
        let served = served.borrow();
        let looked = served.as_ref()?.metadata.get(path)?;
        Some(looked.clone().map_err(|err| err.error()))
    });
    kept.unwrap_or_else(|| std::fs::metadata(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_regular_file;

    /// What a build is served is what reading the file then would have given, errors alike;
    /// a file not read ahead is read as it is asked for, and nothing is served once the
    /// build ends.
    #[test]
    fn a_build_is_served_what_reading_would_have_given() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("read-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (present, missing, later) =
            (dir.join("present"), dir.join("missing"), dir.join("later"));
        std::fs::write(&present, b"first")?;
        let regular = ReadKind::Regular { max_bytes: 3 };
        let whole = ReadKind::Whole { max_bytes: 5 };
        let mut files = ReadAhead::new();
        for path in [&present, &missing] {
            files.read(path, whole);
            files.read(path, regular);
        }
        let expected = (
            std::fs::read(&missing).map_err(|e| e.to_string()),
            read_regular_file_now(&present, 3),
            read_regular_file_now(&missing, 3),
        );
        std::fs::write(&present, b"second")?;
        std::fs::write(&later, b"later")?;
        let files = Arc::new(files);
        let served = files.serve(|| {
            (
                read_whole(&present, 5).map_err(|e| e.to_string()),
                read_whole(&missing, 5).map_err(|e| e.to_string()),
                read_regular_file(&present, 3),
                read_regular_file(&missing, 3),
                read_whole(&later, 5).map_err(|e| e.to_string()),
                metadata(&present)
                    .map(|meta| meta.len())
                    .map_err(|e| e.to_string()),
            )
        });
        let after = read_whole(&present, 6).map_err(|e| e.to_string());
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(served.0, Ok(b"first".to_vec()));
        assert_eq!(served.1, expected.0);
        assert!(served.1.is_err());
        assert_eq!(served.2, expected.1);
        assert_eq!(served.3, expected.2);
        assert_eq!(served.4, Ok(b"later".to_vec()));
        assert_eq!(served.5, Ok(5));
        assert_eq!(after, Ok(b"second".to_vec()));
        Ok(())
    }

    /// A read past its bound is refused with an error that says the bound: a regular file by
    /// its length, a device that never ends once it gave a byte more; read ahead alike.
    #[test]
    fn a_read_past_its_bound_is_refused() -> io::Result<()> {
        let path = std::env::temp_dir().join(format!("read-ahead-bound-{}", std::process::id()));
        std::fs::File::create(&path)?.set_len(4 << 10)?;
        let own = read_whole(&path, 4 << 10).map(|bytes| bytes.len());
        let past = read_whole(&path, (4 << 10) - 1).map_err(|e| (e.kind(), e.to_string()));
        let mut files = ReadAhead::new();
        files.read(&path, ReadKind::Whole { max_bytes: 1 << 10 });
        let served =
            Arc::new(files).serve(|| read_whole(&path, 1 << 10).map_err(|e| e.to_string()));
        std::fs::remove_file(&path)?;
        assert_eq!(own.ok(), Some(4 << 10));
        let expected = (
            io::ErrorKind::FileTooLarge,
            "it is larger than 4095 bytes".to_owned(),
        );
        assert_eq!(past.err(), Some(expected));
        assert_eq!(served.err().as_deref(), Some("it is larger than 1 KiB"));
        #[cfg(unix)]
        {
            let endless = read_whole(Path::new("/dev/zero"), 1 << 20).map_err(|e| e.to_string());
            assert_eq!(endless.err().as_deref(), Some("it is larger than 1 MiB"));
        }
        Ok(())
    }
}
