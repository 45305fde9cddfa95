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
}

impl RedisServer {
    /// Starts a server; `Ok(None)` when redis-server is not installed and the interop tests
    /// may be skipped (see [`Suite::ready`]).
    pub fn start(scratch: &Scratch) -> TestResult<Option<Self>> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        let missing = (!installed).then(|| "redis-server is not installed".to_owned());
        if !Suite::new("redis").ready(missing)? {
            return Ok(None);
        }
        let address = free_addr()?;
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
        let mut process = ChildGuard::spawn(command, "redis-server", scratch)?;
        wait_until(Duration::from_secs(10), "redis-server to listen", || {
            process.check_running()?;
            Ok(TcpStream::connect(address).is_ok())
        })?;
        Ok(Some(Self { process, address }))
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
