//! The Thrift interop suite (`tests/interop/thrift/`): Apache Thrift's Python library running a
//! Greeter server (`server.py`) and clients (`client.py`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::follow::Call;
use super::interop::Suite;
use super::process::{ChildGuard, Scratch};
use super::{TestResult, free_port};

/// The most a server start or one client run may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The scripts, the generated code and the venv `setup.sh` makes.
pub const SUITE: Suite = Suite::new("thrift");

/// `Ok(true)` when Python can import thrift; `Ok(false)` (test skipped) when it cannot and
/// `METAPROTOCOL_REQUIRE_INTEROP` is unset; an error when it is required.
pub fn tools_ready() -> TestResult<bool> {
    let imported = SUITE
        .command(SUITE.python())
        .args(["-c", "import thrift.transport.THeaderTransport"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    SUITE.ready((!imported).then(|| "Apache Thrift's Python library is not importable".to_owned()))
}

/// Starts `script` with `args` under the suite's Python; `what` names it in logs and errors.
pub fn spawn_script(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    what: &str,
    scratch: &Scratch,
) -> TestResult<ChildGuard> {
    let mut command = SUITE.command(SUITE.python());
    command.arg(script).args(args).envs(env.iter().copied());
    ChildGuard::spawn(command, what, scratch)
}

/// A Python Greeter server speaking one transport and protocol.
pub struct Server {
    pub port: u16,
    pub process: ChildGuard,
}

impl Server {
    /// Starts a server named `name` (its replies say `from <name>`).
    pub fn start(
        transport: &str,
        protocol: &str,
        name: &str,
        scratch: &Scratch,
    ) -> TestResult<Self> {
        Self::start_on(free_port()?, transport, protocol, name, scratch)
    }

    /// A server on `port` (to bring back one that was stopped).
    pub fn start_on(
        port: u16,
        transport: &str,
        protocol: &str,
        name: &str,
        scratch: &Scratch,
    ) -> TestResult<Self> {
        Self::start_with_env(port, transport, protocol, name, &[], scratch)
    }

    /// A server on `port` whose process has `env` too (`THRIFT_STRICT_READ=1`: a binary
    /// server that refuses messages without the version word).
    pub fn start_with_env(
        port: u16,
        transport: &str,
        protocol: &str,
        name: &str,
        env: &[(&str, &str)],
        scratch: &Scratch,
    ) -> TestResult<Self> {
        let what = format!("server-{name}-{transport}-{protocol}");
        let port_arg = port.to_string();
        let mut process = spawn_script(
            "server.py",
            &[&port_arg, transport, protocol, name],
            env,
            &what,
            scratch,
        )?;
        process.wait_for_stdout("listening", DEADLINE)?;
        Ok(Self { port, process })
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many connections the server has accepted.
    pub fn connections(&self) -> usize {
        self.process
            .stdout()
            .lines()
            .filter(|l| *l == "connection")
            .count()
    }
}

/// The Python client's `load` scenario: connections calling `sayHello` through a framed binary
/// listener without pause, each call logged with its start, end and server.
pub struct LoadClient {
    process: ChildGuard,
    stop_file: PathBuf,
    calls_file: PathBuf,
}

impl LoadClient {
    /// Starts `connections` connections to `port` (files named after `name` in `scratch`) and
    /// returns once they call. Blocks: call it within `block_in_place` on a runtime.
    pub fn start(port: u16, connections: usize, name: &str, scratch: &Scratch) -> TestResult<Self> {
        let stop_file = scratch.path(&format!("{name}-stop"));
        let calls_file = scratch.path(&format!("{name}-calls"));
        let mut process = spawn_script(
            "client.py",
            &[
                &port.to_string(),
                "framed",
                "binary",
                "load",
                &connections.to_string(),
                &stop_file.display().to_string(),
                &calls_file.display().to_string(),
            ],
            &[],
            name,
            scratch,
        )?;
        process.wait_for_stdout("running", DEADLINE)?;
        Ok(Self {
            process,
            stop_file,
            calls_file,
        })
    }

    /// Stops the calls and returns them; an error if any call failed. Blocks, as `start`.
    pub fn finish(mut self) -> TestResult<Vec<Call>> {
        std::fs::write(&self.stop_file, "")?;
        let status = self.process.wait(DEADLINE)?;
        if !status.success() {
            return Err(format!("the load client failed: {}", self.process.stderr_tail()).into());
        }
        let summary = self.process.stdout();
        if !summary.contains("\"errors\": []") {
            return Err(format!("calls failed: {summary}").into());
        }
        Ok(std::fs::read_to_string(&self.calls_file)?
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ').skip(1);
                Some((
                    fields.next()?.parse().ok()?,
                    fields.next()?.parse().ok()?,
                    fields.next()?.to_owned(),
                ))
            })
            .collect())
    }
}
