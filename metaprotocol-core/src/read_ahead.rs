//! Files read ahead of the code that takes them, so that a build that must not wait (a config
//! update building on an async runtime's thread) finds them read.
//!
//! A read can wait without end (a network file system that does not answer, a FIFO nothing
//! writes to), so whoever builds reads the files a build will take on a thread of their own,
//! waits for that as long as they choose, and then runs the build with what was read
//! ([`ReadAhead::serve`]): [`read_regular_file`](crate::read_regular_file), [`read_whole`] and [`metadata`] answer from it
//! on the build's thread, exactly as they would have answered reading the file then (the same
//! contents, or the same error). A file not read ahead is read as it is asked for.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::watched_file::read_regular_file_now;

/// How a file is read: what [`read_regular_file`](crate::read_regular_file) or [`read_whole`] does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadKind {
    /// [`read_regular_file`](crate::read_regular_file) with this bound: a regular file, never waited for.
    Regular {
        /// The most bytes it may hold.
        max_bytes: u64,
    },
    /// [`read_whole`]: whatever the path names, read to its end.
    Whole,
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
            ReadKind::Whole => std::fs::read(path).map_err(|err| KeptError::of(&err)),
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
/// what it names: a FIFO's writer, a network file system); from the files read ahead when
/// they hold it.
pub fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    match served(path, ReadKind::Whole) {
        Some(read) => read.map_err(|err| err.error()),
        None => std::fs::read(path),
    }
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
        let mut files = ReadAhead::new();
        for path in [&present, &missing] {
            files.read(path, ReadKind::Whole);
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
                read_whole(&present).map_err(|e| e.to_string()),
                read_whole(&missing).map_err(|e| e.to_string()),
                read_regular_file(&present, 3),
                read_regular_file(&missing, 3),
                read_whole(&later).map_err(|e| e.to_string()),
                metadata(&present)
                    .map(|meta| meta.len())
                    .map_err(|e| e.to_string()),
            )
        });
        let after = read_whole(&present).map_err(|e| e.to_string());
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
}
