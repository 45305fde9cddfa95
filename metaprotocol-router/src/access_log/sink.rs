//! Where access log lines go: one writer thread per path, fed through a bounded queue, so that a
//! slow or stuck disk (or a pipe nobody reads) never slows a request: when the queue is full,
//! lines are dropped and counted. Listeners logging to one path share its writer.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::metrics::counter::Counter;

use super::LogEntry;
use super::format::LogFormat;
use crate::stats::{Metrics, MetricsScope};

/// Bytes of lines gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;

/// A line on its way to the writer: formatted there, off the request path.
struct Line {
    format: Arc<LogFormat>,
    entry: LogEntry,
}

/// The writer of one path.
#[derive(Debug)]
pub(crate) struct Sink {
    sender: SyncSender<Line>,
    reopen: Arc<AtomicBool>,
    scope: MetricsScope,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Line")
    }
}

impl Sink {
    /// Queues `entry`, to be written in `format`; false (nothing queued) when the queue is full
    /// or the writer is gone.
    pub fn send(&self, format: &Arc<LogFormat>, entry: LogEntry) -> bool {
        let line = Line {
            format: format.clone(),
            entry,
        };
        match self.sender.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Makes the writer close and reopen its file before its next write (after logrotate moved
    /// it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.scope.retire();
    }
}

/// The writers of a proxy, by path; a writer ends when no listener logs to its path any more.
#[derive(Debug, Default)]
pub(crate) struct Sinks {
    sinks: Mutex<BTreeMap<String, Weak<Sink>>>,
}

impl Sinks {
    /// The writer of `path`, started with a queue of `queue` lines if there is none.
    pub fn get(&self, path: &str, queue: usize, metrics: &Metrics) -> Result<Arc<Sink>, String> {
        let mut sinks = match self.sinks.lock() {
            Ok(sinks) => sinks,
            Err(poisoned) => poisoned.into_inner(),
        };
        sinks.retain(|_, sink| sink.strong_count() > 0);
        if let Some(sink) = sinks.get(path).and_then(Weak::upgrade) {
            return Ok(sink);
        }
        let destination = Destination::of(path)?;
        let scope = metrics.root().detached("path", path);
        let errors = scope.counter(
            "access_log_write_errors",
            "Access log writes (or file opens) that failed, by path",
        );
        let (sender, lines) = sync_channel(queue);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            destination,
            open: None,
            reopen: reopen.clone(),
            errors,
        };
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run(lines))
            .map_err(|err| format!("cannot start the access log writer: {err}"))?;
        let sink = Arc::new(Sink {
            sender,
            reopen,
            scope,
        });
        sinks.insert(path.to_owned(), Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Asks every writer to reopen its file.
    pub fn reopen_all(&self) {
        let sinks = match self.sinks.lock() {
            Ok(sinks) => sinks,
            Err(poisoned) => poisoned.into_inner(),
        };
        for sink in sinks.values().filter_map(Weak::upgrade) {
            sink.reopen();
        }
    }
}

/// Where a path's lines go.
#[derive(Clone, Debug)]
enum Destination {
    Stdout,
    Stderr,
    /// A file, created if need be and appended to.
    File(String),
}

impl Destination {
    fn of(path: &str) -> Result<Self, String> {
        match path {
            "/dev/stdout" | "stdout" => Ok(Self::Stdout),
            "/dev/stderr" | "stderr" => Ok(Self::Stderr),
            file => {
                let parent = std::path::Path::new(file)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if parent.is_dir() {
                    Ok(Self::File(file.to_owned()))
                } else {
                    Err(format!("the directory {} does not exist", parent.display()))
                }
            }
        }
    }
}

/// The writer thread's state.
struct Writer {
    path: String,
    destination: Destination,
    /// The open file; opened on the first line (opening may block: a pipe waits for its
    /// reader), again after a reopen or a failed write.
    open: Option<File>,
    reopen: Arc<AtomicBool>,
    errors: Counter,
}

impl Writer {
    /// Writes lines until every sender is gone, gathering those that wait into one write.
    fn run(mut self, lines: Receiver<Line>) {
        let mut batch = String::new();
        while let Ok(line) = lines.recv() {
            line.format.write(&line.entry, &mut batch);
            while batch.len() < WRITE_BATCH
                && let Ok(line) = lines.try_recv()
            {
                line.format.write(&line.entry, &mut batch);
            }
            self.write(batch.as_bytes());
            batch.clear();
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.open = None;
        }
        let written = match &self.destination {
            Destination::Stdout => std::io::stdout().lock().write_all(bytes),
            Destination::Stderr => std::io::stderr().lock().write_all(bytes),
            Destination::File(path) => {
                if self.open.is_none() {
                    match OpenOptions::new().create(true).append(true).open(path) {
                        Ok(file) => self.open = Some(file),
                        Err(err) => {
                            self.failed(&err);
                            return;
                        }
                    }
                }
                match self.open.as_mut().map(|file| file.write_all(bytes)) {
                    Some(Err(err)) => {
                        // Reopened on the next write.
                        self.open = None;
                        Err(err)
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(err) = written {
            self.failed(&err);
        }
    }

    fn failed(&self, err: &std::io::Error) {
        // The first failure is logged; the rest are counted.
        if self.errors.inc() == 0 {
            tracing::error!(path = %self.path, error = %err, "cannot write the access log");
        }
    }
}
