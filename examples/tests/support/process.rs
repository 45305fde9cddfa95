//! Child processes that cannot outlive their test, scratch directories, bounded waits.
//!
//! Every wait has a deadline and every child is killed and reaped when its guard drops.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::TestResult;

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// A scratch directory for configs, logs and call records, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory named after the test (and this process, as test binaries run in
    /// parallel).
    pub fn new(test: &str) -> TestResult<Self> {
        let dir = std::env::temp_dir().join(format!("metaprotocol-{test}-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// A file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed and reaped when dropped; its stdout and stderr go to files in the
/// scratch directory. Its stdin is a pipe held open until the drop: the interop providers exit
/// when it closes, so they go with the test process even if that is killed before it can drop
/// anything.
pub struct ChildGuard {
    child: Child,
    _stdin: Option<ChildStdin>,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildGuard {
    /// Starts `command`; `what` names it in file names and failure messages.
    pub fn spawn(mut command: Command, what: &str, scratch: &Scratch) -> TestResult<Self> {
        let stdout = scratch.path(&format!("{what}.out"));
        let stderr = scratch.path(&format!("{what}.err"));
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            child,
            _stdin: stdin,
            what: what.to_owned(),
            stdout,
            stderr,
        })
    }

    /// The process id, to send the process a signal.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The end of what the process said on stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> TestResult {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!(
                "{} exited early ({status}): {}",
                self.what,
                self.stderr_tail()
            )
            .into()),
        }
    }

    /// Waits until the process, still running, has printed `marker` on stdout.
    pub fn wait_for_stdout(&mut self, marker: &str, within: Duration) -> TestResult {
        let what = format!("{} to print {marker:?}", self.what);
        wait_until(within, &what, || {
            self.check_running()?;
            Ok(self.stdout().contains(marker))
        })
    }

    /// Waits for the process to exit on its own and returns how it did; kills it and fails at
    /// the deadline.
    pub fn wait(&mut self, within: Duration) -> TestResult<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let (out, err) = (self.stdout(), self.stderr_tail());
        Err(format!(
            "{} still running after {within:?}; stdout: {out} stderr: {err}",
            self.what
        )
        .into())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` every 20 ms until it holds or `within` passes.
pub fn wait_until(
    within: Duration,
    what: &str,
    mut ready: impl FnMut() -> TestResult<bool>,
) -> TestResult {
    let deadline = Instant::now() + within;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for {what}").into());
        }
        thread::sleep(POLL);
    }
}
