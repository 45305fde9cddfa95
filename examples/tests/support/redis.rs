//! A real redis-server for the global rate limit tests: started on a free loopback port with
//! persistence off, stopped (killed and reaped) when dropped. `setup.sh` in
//! `tests/interop/redis/` installs it.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::interop::Suite;
use super::process::{ChildGuard, Scratch, wait_until};
use super::{TestResult, free_addr};

/// A running redis-server.
pub struct RedisServer {
    process: ChildGuard,
    /// Where it listens.
    pub address: SocketAddr,
    /// The password it requires, if any.
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server; `Ok(None)` when redis-server is not installed and the interop tests
    /// may be skipped (see [`Suite::ready`]).
    pub fn start(scratch: &Scratch) -> TestResult<Option<Self>> {
        Self::start_with(scratch, None)
    }

    /// Starts a server that requires `password` (`requirepass`) of its clients.
    pub fn start_requiring(scratch: &Scratch, password: &str) -> TestResult<Option<Self>> {
        Self::start_with(scratch, Some(password))
    }

    fn start_with(scratch: &Scratch, password: Option<&str>) -> TestResult<Option<Self>> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        let missing = (!installed).then(|| "redis-server is not installed".to_owned());
        if !Suite::new("redis").ready(missing)? {
            return Ok(None);
        }
        Self::launch(scratch, free_addr()?, password).map(Some)
    }

    /// Starts a server on `address`, where one was stopped: a restart (the new one holds no
    /// keys and no scripts).
    pub fn restart_on(scratch: &Scratch, address: SocketAddr) -> TestResult<Self> {
        Self::launch(scratch, address, None)
    }

    fn launch(scratch: &Scratch, address: SocketAddr, password: Option<&str>) -> TestResult<Self> {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &address.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let mut process = ChildGuard::spawn(command, "redis-server", scratch)?;
        wait_until(Duration::from_secs(20), "redis-server to listen", || {
            process.check_running()?;
            Ok(TcpStream::connect(address).is_ok())
        })?;
        Ok(Self {
            process,
            address,
            password: password.map(str::to_owned),
        })
    }

    /// Pauses the server (SIGSTOP): it accepts connections but answers nothing, as a server
    /// that is overloaded or cut off.
    pub fn pause(&self) -> TestResult {
        self.signal("-STOP")
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) -> TestResult {
        self.signal("-CONT")
    }

    /// Every key the server holds, asked with `redis-cli` (installed with the server).
    pub fn keys(&self) -> TestResult<Vec<String>> {
        Ok(self.cli(&["--scan"])?.lines().map(str::to_owned).collect())
    }

    /// What `redis-cli` answers to `args` (a command, or options such as `--scan`).
    pub fn cli(&self, args: &[&str]) -> TestResult<String> {
        let mut command = Command::new("timeout");
        command.args([
            "10",
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &self.address.port().to_string(),
        ]);
        command.args(args);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let out = command.output()?;
        if !out.status.success() {
            return Err(format!("redis-cli {args:?} failed: {}", out.status).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn signal(&self, signal: &str) -> TestResult {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.process.pid().to_string())
            .status()?;
        if !status.success() {
            return Err(format!("kill {signal} failed: {status}").into());
        }
        Ok(())
    }
}
