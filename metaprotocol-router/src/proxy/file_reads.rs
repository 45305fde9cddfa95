//! The files a config update builds from (listeners' and clusters' TLS certificates, keys, CAs
//! and CRLs, a `global_ratelimit` filter's `password_file`, a `wasm` filter's module, a
//! cluster's codec options that name files), read before the update builds, on a thread of
//! their own.
//!
//! The build is synchronous and runs on the runtime's thread: a read there from a network file
//! system that does not answer would stall the runtime's other tasks (on a current-thread
//! runtime, every connection), and no deadline could cut it. Read ahead, a read that does not
//! end fails the update at its deadline, naming the file, while the proxy serves on; the build
//! then takes what was read ([`ReadAhead::serve`]), with the errors reading it then would have
//! given. A file an embedder's own filter or codec reads (an option not named `*_file`) is not
//! known ahead, and is read as the build asks for it.
//!
//! A read that never ends holds its thread for good: at most [`MOST_READERS`] such threads run
//! at once for a proxy, and an update that finds them all taken waits for one until its
//! deadline, then fails naming its first file. An update that fails so failed for the proxy's
//! file system, not for its config ([`ConfigError::was_not_read`]: the admin API answers it
//! `503`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metaprotocol_core::{MAX_WATCHED_FILE_BYTES, ReadAhead, ReadKind};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::{ClusterSpec, Config, ConfigError, ListenerSpec};
use crate::file_stamp::{FilesLooked, Look};
use crate::filters;
use crate::transport::TLS_FILE_MAX_BYTES;

/// How long an update waits for the files it reads when its caller gave it no deadline (a
/// reload of the config file, the embedding API, a dynamic source): far longer than a read of
/// a few certificates takes from any file system that answers.
pub(crate) const FILE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most threads reading a proxy's updates' files at once: each waits with a read that may
/// never end.
pub(crate) const MOST_READERS: usize = 4;

/// The places of the threads reading a proxy's updates' files: at most [`MOST_READERS`], each
/// held until its reads end, however long after its update gave up that is.
#[derive(Debug)]
pub(crate) struct FileReaders(Arc<Semaphore>);

impl Default for FileReaders {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MOST_READERS)))
    }
}

/// A file an update builds from.
#[derive(Debug)]
pub(crate) struct FileToRead {
    /// The config field that names it (`listeners[0].tls.cert_file`).
    field: String,
    path: PathBuf,
    kind: ReadKind,
}

/// What the build of a cluster makes anew, and so reads the files of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rebuilt {
    /// Its TLS connectors: for a new cluster, or one whose `tls` or `transport_socket_matches`
    /// changed (else the running connectors stay, and its endpoints' connections with them).
    pub tls: bool,
    /// Its codec: for a new cluster, or one whose `codec` options or protocol changed.
    pub codec: bool,
}

impl Rebuilt {
    /// Nothing: the cluster runs as it is built.
    pub const NOTHING: Self = Self {
        tls: false,
        codec: false,
    };
    /// All of it: a new cluster.
    pub const ALL: Self = Self {
        tls: true,
        codec: true,
    };
}

/// The files an update reads.
#[derive(Debug, Default)]
pub(crate) struct FilesToRead(Vec<FileToRead>);

impl FilesToRead {
    fn add(&mut self, field: String, path: &std::path::Path, kind: ReadKind) {
        self.0.push(FileToRead {
            field,
            path: path.to_owned(),
            kind,
        });
    }

    /// Adds the files listener `listeners[at]` is built from (the build makes its context
    /// anew): its TLS files unless it keeps its running TLS settings (`keeps_tls`), its codec
    /// options named `*_file`, and those of its built-in filters.
    ///
    /// The codec's and filters' files are read at any change of the listener, even one that
    /// leaves their options as they were: its build makes its codec and filter chain anew (a
    /// chain is built whole, each filter with what it read: a `wasm` filter compiles its module
    /// again, a `global_ratelimit` filter opens its client with its password), so the build
    /// takes their contents whatever changed. Keeping what an earlier update read, to be reused
    /// while a file's metadata stays the same, would not spare that: it would still look at each
    /// file (a `stat` waits on a file system that does not answer as a read does, and is bounded
    /// here alike), and would save the read only, a small part of building a module the read
    /// feeds, while holding every module read in memory between updates.
    pub fn listener(&mut self, at: usize, spec: &ListenerSpec, keeps_tls: bool) {
        let place = format!("listeners[{at}]");
        if let Some(tls) = spec.tls.as_ref().filter(|_| !keeps_tls) {
            self.add_tls(&place, tls.files());
        }
        self.add_codec(&place, spec.codec.as_ref());
        for (i, filter) in spec.filters.iter().enumerate() {
            for (field, path, max_bytes) in filters::files_read(filter) {
                let field = format!("{place}.filters[{i}].config.{field}");
                self.add(field, &path, ReadKind::Whole { max_bytes });
            }
        }
    }

    /// True if cluster `spec` is built from files: its TLS files (of its `tls` and of its
    /// `transport_socket_matches`), and its codec options named `*_file` (the files codecs
    /// watch, `authentication_data_file`).
    pub fn names_files(spec: &ClusterSpec) -> bool {
        spec.tls.is_some()
            || spec
                .transport_socket_matches
                .iter()
                .any(|m| m.tls.is_some())
            || codec_files(spec.codec.as_ref()).next().is_some()
    }

    /// Adds the files of cluster `clusters[at]` (see [`FilesToRead::names_files`]) that its
    /// build reads: those of its TLS settings, of its codec options, each when `rebuilt` says
    /// the build makes it anew.
    pub fn cluster(&mut self, at: usize, spec: &ClusterSpec, rebuilt: Rebuilt) {
        let place = format!("clusters[{at}]");
        if rebuilt.tls {
            if let Some(tls) = &spec.tls {
                self.add_tls(&place, tls.files());
            }
            for (i, entry) in spec.transport_socket_matches.iter().enumerate() {
                if let Some(tls) = &entry.tls {
                    let place = format!("{place}.transport_socket_matches[{i}]");
                    self.add_tls(&place, tls.files());
                }
            }
        }
        if rebuilt.codec {
            self.add_codec(&place, spec.codec.as_ref());
        }
    }

    /// Adds the TLS `files` (each with the field naming it) of the listener or cluster at
    /// `place`.
    fn add_tls<'a>(
        &mut self,
        place: &str,
        files: impl Iterator<Item = (&'static str, &'a PathBuf)>,
    ) {
        let kind = ReadKind::Regular {
            max_bytes: TLS_FILE_MAX_BYTES,
        };
        for (field, path) in files {
            self.add(format!("{place}.tls.{field}"), path, kind);
        }
    }

    /// Adds the files named by `codec`, the codec options of the listener or cluster at `place`.
    fn add_codec(
        &mut self,
        place: &str,
        codec: Option<&serde_json::Map<String, serde_json::Value>>,
    ) {
        let kind = ReadKind::Regular {
            max_bytes: MAX_WATCHED_FILE_BYTES,
        };
        for (option, path) in codec_files(codec) {
            self.add(format!("{place}.codec.{option}"), path.as_ref(), kind);
        }
    }

    /// The fields and paths of the files, to tell the errors of a build that read them
    /// ([`FilesRead::mark`]).
    pub fn names(&self) -> FilesRead {
        FilesRead {
            fields: self.0.iter().map(|file| file.field.clone()).collect(),
            paths: self.0.iter().map(|file| file.path.clone()).collect(),
        }
    }

    /// Reads the files on a thread of their own, waiting for it until `deadline`: what was
    /// read, or an error naming the file whose read had not ended by then.
    pub async fn read(
        self,
        readers: &FileReaders,
        deadline: Instant,
    ) -> Result<Arc<ReadAhead>, ConfigError> {
        let Some(first) = self.0.first() else {
            return Ok(Arc::new(ReadAhead::new()));
        };
        let first = (first.field.clone(), first.path.clone());
        let began = Instant::now();
        let Ok(Ok(reader)) =
            tokio::time::timeout_at(deadline, readers.0.clone().acquire_owned()).await
        else {
            return Err(ConfigError::new(
                &first.0,
                format!(
                    "`{}` was not read: {MOST_READERS} reads of files by earlier updates have \
                     not ended (a slow or unreachable file system?), and the update gave up \
                     after {:.1} s",
                    first.1.display(),
                    began.elapsed().as_secs_f64()
                ),
            )
            .of_a_file_not_read());
        };
        let files = Arc::new(self.0);
        // The place of the file being read, to name it if its read does not end.
        let reading = Arc::new(AtomicUsize::new(0));
        let spawned = {
            let (files, reading) = (files.clone(), reading.clone());
            on_a_thread(move || {
                // Held until the reads end, however long that is.
                let _reader = reader;
                let mut read = ReadAhead::new();
                for (at, file) in files.iter().enumerate() {
                    reading.store(at, Ordering::Relaxed);
                    read.read(&file.path, file.kind);
                }
                read
            })
        };
        let read = match spawned {
            Ok(read) => read,
            Err(err) => {
                return Err(ConfigError::new(
                    &first.0,
                    format!(
                        "`{}` was not read: no thread to read it on: {err}",
                        first.1.display()
                    ),
                )
                .of_a_file_not_read());
            }
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(read)) => Ok(Arc::new(read)),
            // The thread ended without an answer: it panicked.
            Ok(Err(_)) => Err(ConfigError::new(
                &first.0,
                format!("`{}` was not read: its reader failed", first.1.display()),
            )
            .of_a_file_not_read()),
            Err(_) => {
                let file = &files[reading.load(Ordering::Relaxed).min(files.len() - 1)];
                Err(ConfigError::new(
                    &file.field,
                    format!(
                        "`{}` was not read: its read had not ended after {:.1} s (a slow or \
                         unreachable file system?), and the update gave up",
                        file.path.display(),
                        began.elapsed().as_secs_f64()
                    ),
                )
                .of_a_file_not_read())
            }
        }
    }
}

/// Runs `call` (reads or looks at files, which may never end: a network file system that does
/// not answer) on a thread of its own, not one of the runtime's: a call that never ends holds
/// that thread alone, and neither the runtime's blocking pool nor its shutdown waits for it.
/// Its answer comes on the channel returned.
pub(crate) fn on_a_thread<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<T>> {
    let (done, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("metaprotocol-file-reads".to_owned())
        .spawn(move || {
            let _ = done.send(call());
        })?;
    Ok(answer)
}

/// What became of a call run by [`OneAtATime::call`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Called<T> {
    /// It answered within its wait.
    Answered(T),
    /// An earlier call, which had not ended within its own wait, has ended since; this is its
    /// answer, as things were when it began (the call asked for now was not run).
    AnsweredLate(T),
    /// It had not ended within its wait (nor had an earlier call still running): it runs on,
    /// and is taken once it ends.
    Unanswered,
    /// It could not run (no thread to run it on), or it panicked: why.
    Failed(String),
}

/// A call that may never end (a look at or read of the watched config file, or of the files a
/// rejected config read), run off the runtime on a thread of its own ([`on_a_thread`]) and
/// waited for a bounded time, one at a time: while one that did not end in its time runs, no
/// other is started, so that a file system that does not answer holds one thread, not one a
/// look.
pub(crate) struct OneAtATime<T> {
    running: Option<tokio::sync::oneshot::Receiver<T>>,
}

impl<T> Default for OneAtATime<T> {
    fn default() -> Self {
        Self { running: None }
    }
}

impl<T: Send + 'static> OneAtATime<T> {
    /// Runs `call`, and waits at most `wait` for its answer. A call still running from before
    /// is not waited for: its answer is taken if it came ([`Called::AnsweredLate`]), and
    /// `call` is not run.
    pub async fn call(
        &mut self,
        wait: Duration,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Called<T> {
        let (mut answer, wait, late) = match self.running.take() {
            Some(running) => (running, Duration::ZERO, true),
            None => match on_a_thread(call) {
                Ok(answer) => (answer, wait, false),
                Err(err) => return Called::Failed(format!("no thread to run it on: {err}")),
            },
        };
        match tokio::time::timeout(wait, &mut answer).await {
            Ok(Ok(answer)) if late => Called::AnsweredLate(answer),
            Ok(Ok(answer)) => Called::Answered(answer),
            // The thread ended without an answer: the call panicked.
            Ok(Err(_)) => Called::Failed("it panicked".to_owned()),
            Err(_) => {
                self.running = Some(answer);
                Called::Unanswered
            }
        }
    }
}

/// The files an update read: the fields naming them, and their paths.
#[derive(Debug)]
pub(crate) struct FilesRead {
    fields: Vec<String>,
    paths: Vec<PathBuf>,
}

impl FilesRead {
    /// `err`, an error of the build that was served `read` (these files), said to come from
    /// them when its field is one of theirs (`crl_files[1]` of `crl_files`): the build refused
    /// what it read there, or could not read it. It then carries how the files looked just
    /// before they were read (as `read` holds it: nothing is looked at again), so that the same
    /// config is tried again once one of them changed, and not before. Errors no file can mend
    /// (an empty path, a key without its certificate) are found before, by the config's checks.
    pub fn mark(&self, err: ConfigError, read: &Arc<ReadAhead>) -> ConfigError {
        let names_a_read_file = self.fields.iter().any(|field| {
            err.field
                .strip_prefix(field.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
        });
        if !names_a_read_file {
            return err;
        }
        let look = read.serve(|| Look::at(self.paths.iter().map(PathBuf::as_path)));
        err.of_files_read(FilesLooked {
            paths: self.paths.clone(),
            look,
        })
    }
}

/// The codec options (a listener's or a cluster's) that name files, by the engine's convention:
/// their names end in `_file`, and they are strings.
fn codec_files(
    options: Option<&serde_json::Map<String, serde_json::Value>>,
) -> impl Iterator<Item = (&str, &str)> {
    options.into_iter().flatten().filter_map(|(option, value)| {
        let path = value.as_str().filter(|_| option.ends_with("_file"))?;
        Some((option.as_str(), path))
    })
}

/// The files `new` builds from beyond `current`: those of its listeners that changed (but the
/// TLS files of those `keeps_tls` says keep their running TLS settings, told the running spec
/// and the new one), and of `clusters` (places in `new.clusters`) those of the parts `rebuilt`
/// says their builds make anew.
pub(crate) fn files_to_read(
    current: &Config,
    new: &Config,
    clusters: impl Iterator<Item = usize>,
    rebuilt: impl Fn(usize) -> Rebuilt,
    keeps_tls: impl Fn(&ListenerSpec, &ListenerSpec) -> bool,
) -> FilesToRead {
    let mut files = FilesToRead::default();
    for (at, spec) in new.listeners.iter().enumerate() {
        let old = current.listeners.iter().find(|l| l.name == spec.name);
        if old != Some(spec) {
            files.listener(at, spec, old.is_some_and(|old| keeps_tls(old, spec)));
        }
    }
    for at in clusters {
        let Some(spec) = new.clusters.get(at) else {
            continue;
        };
        // The cheap look first: most clusters name no file, and are not looked up.
        if FilesToRead::names_files(spec) {
            files.cluster(at, spec, rebuilt(at));
        }
    }
    files
}
