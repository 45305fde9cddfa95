//! Where access log lines go: one writer thread per path, fed through a bounded queue, so that a
//! slow or stuck disk (or a pipe nobody reads) never slows a request: when the queue is full,
//! lines are dropped and counted, and a request finds that out before capturing its line (one
//! atomic load: no lock, no system call, no wakeup of the writer). Listeners logging to one path
//! share its writer. At shutdown the proxy waits, for a while, until the writers have written
//! what was queued ([`Sinks::flush_all`]): the process would otherwise exit with those lines.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::LogEntry;
use super::format::LogFormat;
use crate::backlog::Backlog;
use crate::stats::Counter;
use crate::stats::{Metrics, MetricsScope};

/// Bytes of lines gathered before one write.
const WRITE_BATCH: usize = 64 * 1024;

/// How often a flush looks again for room in a full queue.
const FLUSH_RETRY: Duration = Duration::from_millis(10);

/// A line on its way to the writer: formatted there, off the request path.
struct Line {
    format: Arc<LogFormat>,
    entry: LogEntry,
}

/// What the writer's queue carries. Lines go unboxed (a box would cost a request an
/// allocation); the rare flush takes a line's room.
#[allow(clippy::large_enum_variant)]
enum Queued {
    Line(Line),
    /// Answered once every line queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The writer of one path.
#[derive(Debug)]
pub(crate) struct Sink {
    sender: SyncSender<Queued>,
    /// The queue's places, taken before a line is captured, given back by the writer.
    backlog: Arc<Backlog>,
    reopen: Arc<AtomicBool>,
    scope: MetricsScope,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Line")
    }
}

impl Sink {
    /// Queues the line `entry` captures, to be written in `format`; false (nothing captured or
    /// queued) when the queue is full or the writer is gone.
    pub fn send(&self, format: &Arc<LogFormat>, entry: impl FnOnce() -> LogEntry) -> bool {
        if !self.backlog.take(1) {
            return false;
        }
        let line = Line {
            format: format.clone(),
            entry: entry(),
        };
        match self.sender.try_send(Queued::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.backlog.give_back(1);
                false
            }
        }
    }

    /// Makes the writer close and reopen its file before its next write (after logrotate moved
    /// it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Waits until the lines queued so far are written, or until `deadline` (a writer stuck on
    /// a pipe nobody reads never finishes); false if they were not written by then.
    async fn flush(&self, deadline: Instant) -> bool {
        let (done, written) = oneshot::channel();
        let mut flush = Queued::Flush(done);
        loop {
            match self.sender.try_send(flush) {
                Ok(()) => break,
                Err(TrySendError::Full(queued)) if Instant::now() < deadline => {
                    flush = queued;
                    tokio::time::sleep(FLUSH_RETRY).await;
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return false,
            }
        }
        matches!(tokio::time::timeout_at(deadline, written).await, Ok(Ok(())))
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
        // A place more than the lines take, for a flush.
        let (sender, lines) = sync_channel(queue + 1);
        let backlog = Arc::new(Backlog::new(queue));
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            destination,
            open: None,
            backlog: backlog.clone(),
            reopen: reopen.clone(),
            cut: false,
            errors,
        };
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run(lines))
            .map_err(|err| format!("cannot start the access log writer: {err}"))?;
        let sink = Arc::new(Sink {
            sender,
            backlog,
            reopen,
            scope,
        });
        sinks.insert(path.to_owned(), Arc::downgrade(&sink));
        Ok(sink)
    }

    /// Asks every writer to reopen its file.
    pub fn reopen_all(&self) {
        for (_, sink) in self.live() {
            sink.reopen();
        }
    }

    /// Waits until every writer has written the lines queued so far, or until `deadline`;
    /// warns of the paths whose lines are still queued then (they are lost if the process
    /// exits).
    pub async fn flush_all(&self, deadline: Instant) {
        for (path, sink) in self.live() {
            if !sink.flush(deadline).await {
                tracing::warn!(%path, "access log lines still waiting for their writer at shutdown");
            }
        }
    }

    /// The writers still in use, by path.
    fn live(&self) -> Vec<(String, Arc<Sink>)> {
        let sinks = match self.sinks.lock() {
            Ok(sinks) => sinks,
            Err(poisoned) => poisoned.into_inner(),
        };
        sinks
            .iter()
            .filter_map(|(path, sink)| Some((path.clone(), sink.upgrade()?)))
            .collect()
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
    backlog: Arc<Backlog>,
    reopen: Arc<AtomicBool>,
    /// True when a failed write left part of a line at the destination's end (a disk that
    /// filled mid-write): the next write ends that line first, so that the next line is not
    /// joined to it.
    cut: bool,
    errors: Counter,
}

impl Writer {
    /// Writes lines until every sender is gone, gathering those that wait into one write, and
    /// answers the flushes among them once that write is done.
    fn run(mut self, queue: Receiver<Queued>) {
        let mut batch = String::new();
        let mut flushes = Vec::new();
        while let Ok(first) = queue.recv() {
            self.take(first, &mut batch, &mut flushes);
            while batch.len() < WRITE_BATCH
                && let Ok(next) = queue.try_recv()
            {
                self.take(next, &mut batch, &mut flushes);
            }
            if !batch.is_empty() {
                self.write(batch.as_bytes());
                batch.clear();
            }
            for flush in flushes.drain(..) {
                let _ = flush.send(());
            }
        }
    }

    /// Adds a line to `batch`, or a flush to those answered after it is written.
    fn take(&self, queued: Queued, batch: &mut String, flushes: &mut Vec<oneshot::Sender<()>>) {
        match queued {
            Queued::Line(line) => {
                self.backlog.give_back(1);
                line.format.write(&line.entry, batch);
            }
            Queued::Flush(done) => flushes.push(done),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.reopen.swap(false, Ordering::AcqRel) {
            // A new file (logrotate moved the old one): a cut line stays in the old one.
            self.open = None;
            self.cut = false;
        }
        let written = match &self.destination {
            Destination::Stdout => write_lines(&mut std::io::stdout().lock(), bytes, &mut self.cut),
            Destination::Stderr => write_lines(&mut std::io::stderr().lock(), bytes, &mut self.cut),
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
                match self
                    .open
                    .as_mut()
                    .map(|file| write_lines(file, bytes, &mut self.cut))
                {
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
        if self.errors.get() == 0 {
            tracing::error!(path = %self.path, error = %err, "cannot write the access log");
        }
        self.errors.inc();
    }
}

/// Writes `lines` (whole lines) to `out`. `cut` says the destination ends with part of a line
/// from an earlier failed write: that line is ended first. When this write fails after part of
/// `lines` went out, `cut` says whether it stopped mid-line.
fn write_lines(out: &mut impl Write, lines: &[u8], cut: &mut bool) -> io::Result<()> {
    if *cut {
        out.write_all(b"\n")?;
        *cut = false;
    }
    let mut rest = lines;
    while !rest.is_empty() {
        let written = match out.write(rest) {
            Ok(0) => Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => Ok(n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(err) => Err(err),
        };
        match written {
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(err) => {
                let sent = lines.get(..lines.len() - rest.len()).unwrap_or_default();
                *cut = !sent.is_empty() && !sent.ends_with(b"\n");
                return Err(err);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LogEntry {
        LogEntry::for_test()
    }

    /// A disk with room for `room` more bytes, then full until `room` is raised.
    struct Disk {
        written: Vec<u8>,
        room: usize,
    }

    impl Write for Disk {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::StorageFull.into());
            }
            let n = bytes.len().min(self.room);
            self.room -= n;
            self.written
                .extend_from_slice(bytes.get(..n).unwrap_or_default());
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_by_a_full_disk_is_not_joined_to_the_next() {
        let mut disk = Disk {
            written: Vec::new(),
            room: 10,
        };
        let mut cut = false;
        // The disk fills in the middle of the batch's second line.
        assert!(write_lines(&mut disk, b"line one\nline two\n", &mut cut).is_err());
        assert!(cut);
        // Still full: nothing of the next batch is written, the cut is still to be ended.
        assert!(write_lines(&mut disk, b"line three\n", &mut cut).is_err());
        assert!(cut);
        disk.room = usize::MAX;
        assert!(write_lines(&mut disk, b"line four\n", &mut cut).is_ok());
        assert!(!cut);
        assert_eq!(
            String::from_utf8_lossy(&disk.written),
            "line one\nl\nline four\n"
        );

        // A disk that fills exactly at a line's end leaves nothing to end.
        let mut disk = Disk {
            written: Vec::new(),
            room: 9,
        };
        assert!(write_lines(&mut disk, b"line one\n", &mut cut).is_ok());
        assert!(write_lines(&mut disk, b"line two\n", &mut cut).is_err());
        assert!(!cut);
    }

    #[test]
    fn a_full_queue_refuses_lines_before_they_are_captured() -> Result<(), String> {
        const QUEUE: usize = 4;
        let dir = std::env::temp_dir().join(format!("access-log-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let fifo = dir.join("nobody-reads.fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|status| status.success()), "mkfifo");
        let path = fifo.to_string_lossy().into_owned();
        let sink = Sinks::default().get(&path, QUEUE, &Metrics::new())?;
        let format = Arc::new(LogFormat::json(super::super::format::JSON)?);

        // The writer takes the first line and blocks opening the pipe; the queue then fills.
        let mut captured = 0;
        let queued = (0..100)
            .filter(|_| {
                sink.send(&format, || {
                    captured += 1;
                    entry()
                })
            })
            .count();
        assert!(
            (QUEUE..=QUEUE + 1).contains(&queued),
            "a queue's worth (and the line the writer holds): {queued}"
        );
        assert_eq!(captured, queued, "refused lines are never captured");

        // A reader lets the writer go, with what was queued.
        let reader = std::thread::spawn(move || std::fs::read_to_string(&fifo));
        drop(sink);
        let written = reader.join().map_err(|_| "the reader panicked")?;
        assert_eq!(written.map_err(|e| e.to_string())?.lines().count(), queued);
        std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())
    }
}
