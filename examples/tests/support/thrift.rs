//! The Thrift interop suite (`tests/interop/thrift/`): Apache Thrift's Python library running a
//! Greeter server (`server.py`) and clients (`client.py`).

use std::process::Stdio;
use std::time::Duration;

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
        let what = format!("server-{name}-{transport}-{protocol}");
        let port_arg = port.to_string();
        let mut process = spawn_script(
            "server.py",
            &[&port_arg, transport, protocol, name],
            &[],
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
