//! The Dubbo peers of this folder: providers answering `sayHello` with who they are and what they
//! received, and clients printing one JSON line per call.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{CLIENT_TIMEOUT_MS, Line, SUITE, TENANT, TRACE};
use crate::support::process::{ChildGuard, Scratch};
use crate::support::{TestResult, free_port};

/// A running provider process and the file it records arriving calls in.
pub struct Provider {
    /// The name it answers with (`... from <name> ...`).
    pub name: &'static str,
    port: u16,
    record: PathBuf,
    launch: Launch,
    _process: ChildGuard,
}

/// How a provider is started: the interpreter and its script.
#[derive(Clone)]
struct Launch {
    program: PathBuf,
    script: &'static str,
}

/// A provider that was stopped, ready to start again where it was.
pub struct Stopped {
    name: &'static str,
    port: u16,
    launch: Launch,
}

impl Stopped {
    /// Starts the provider again on its port.
    pub fn restart(self, scratch: &Scratch) -> TestResult<Provider> {
        Provider::start_on(self.launch, self.name, self.port, scratch)
    }
}

/// A call as the provider recorded it.
#[derive(Debug)]
pub struct RecordedCall {
    /// Whether the request had the two-way flag.
    pub two_way: bool,
    /// The `sayHello` argument.
    pub name: String,
    /// Every attachment the provider received.
    pub attachments: BTreeMap<String, String>,
}

impl Provider {
    /// Starts `script` (run by `program`) on a free port and waits until it listens.
    fn start(
        program: PathBuf,
        script: &'static str,
        name: &'static str,
        scratch: &Scratch,
    ) -> TestResult<Self> {
        Self::start_on(Launch { program, script }, name, free_port()?, scratch)
    }

    /// Starts the provider of `launch` on `port` and waits until it listens.
    fn start_on(
        launch: Launch,
        name: &'static str,
        port: u16,
        scratch: &Scratch,
    ) -> TestResult<Self> {
        let record = scratch.path(&format!("{name}.calls"));
        let mut command = SUITE.command(&launch.program);
        command
            .arg(launch.script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--name")
            .arg(name);
        command.arg("--record").arg(&record);
        let mut process = ChildGuard::spawn(command, &format!("provider-{name}"), scratch)?;
        process.wait_for_stdout("ready", Duration::from_secs(20))?;
        Ok(Self {
            name,
            port,
            record,
            launch,
            _process: process,
        })
    }

    /// Kills the provider; [`Stopped::restart`] brings it back on the same port.
    pub fn stop(self) -> Stopped {
        Stopped {
            name: self.name,
            port: self.port,
            launch: self.launch,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The calls that reached it so far, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        let text = fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // <provider> <twoway|oneway> <name> <k=v,...>
                let mut fields = line.split('\t').skip(1);
                let two_way = fields.next()? == "twoway";
                let name = fields.next()?.to_owned();
                let attachments = attachment_pairs(fields.next().unwrap_or(""));
                Some(RecordedCall {
                    two_way,
                    name,
                    attachments,
                })
            })
            .collect()
    }
}

/// The sofa-rpc-node provider as `v1` (the `user` group in the proxy configs) and the dubbo-py
/// provider as `v2` (the `batchjob` group).
pub fn start_providers(scratch: &Scratch) -> TestResult<(Provider, Provider)> {
    Ok((
        Provider::start(PathBuf::from("node"), "node_provider.js", "v1", scratch)?,
        Provider::start(SUITE.python(), "py_provider.py", "v2", scratch)?,
    ))
}

/// Parses the providers' `k=v,k=v` attachment text.
fn attachment_pairs(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A provider's reply `Hello, <name> from <provider> attachments=<k=v,...>`, taken apart.
#[derive(Debug)]
pub struct Reply {
    /// `Hello, <name>`.
    pub greeting: String,
    /// Which provider answered.
    pub provider: String,
    attachments: BTreeMap<String, String>,
}

impl Reply {
    fn parse(text: &str) -> TestResult<Self> {
        let (head, attachments) = text
            .split_once(" attachments=")
            .ok_or_else(|| format!("not a provider reply: {text}"))?;
        let (greeting, provider) = head
            .rsplit_once(" from ")
            .ok_or_else(|| format!("no provider in reply: {text}"))?;
        Ok(Self {
            greeting: greeting.to_owned(),
            provider: provider.to_owned(),
            attachments: attachment_pairs(attachments),
        })
    }

    /// An attachment the provider received with the request.
    pub fn attachment(&self, key: &str) -> Option<&str> {
        self.attachments.get(key).map(String::as_str)
    }
}

/// The client libraries, one script each.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Client {
    /// dubbo2.js (npm, Apache dubbo-js).
    DubboJs,
    /// sofa-rpc-node with dubbo-remoting (npm).
    Sofa,
    /// dubbo-py (PyPI).
    DubboPy,
    /// dubbo-ssl-python (PyPI), plain TCP.
    DubboSsl,
}

/// Every client library.
pub const ALL_CLIENTS: [Client; 4] = [
    Client::DubboJs,
    Client::Sofa,
    Client::DubboPy,
    Client::DubboSsl,
];

impl Client {
    fn command(self) -> std::process::Command {
        let (program, script) = match self {
            Client::DubboJs => (PathBuf::from("node"), "dubbojs_client.js"),
            Client::Sofa => (PathBuf::from("node"), "sofa_client.js"),
            Client::DubboPy => (SUITE.python(), "dubbopy_client.py"),
            Client::DubboSsl => (SUITE.python(), "dubbossl_client.py"),
        };
        let mut command = SUITE.command(program);
        command.arg(script);
        command
    }
}

/// Numbers client runs so each gets its own log files.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// One client run: `count` calls of `sayHello(name)` with `attachments`, plus extra flags.
pub struct Run<'a> {
    /// The client library.
    pub client: Client,
    /// Where it connects.
    pub addr: &'a str,
    /// The `sayHello` argument.
    pub name: &'a str,
    /// How many calls.
    pub count: u32,
    /// The attachments of every call.
    pub attachments: Vec<(&'a str, &'a str)>,
    /// Another interface than the demo service's.
    pub interface: Option<&'a str>,
    /// Script-specific flags (`--oneway`, `--heartbeat`, `--heartbeat-idle-secs S`,
    /// `--dubbo-version V`).
    pub extra: Vec<&'a str>,
}

impl<'a> Run<'a> {
    /// One `sayHello("w1")` with the golden captures' attachments.
    pub fn hello(client: Client, addr: &'a str) -> Self {
        Self {
            client,
            addr,
            name: "w1",
            count: 1,
            attachments: vec![TRACE, TENANT],
            interface: None,
            extra: vec![],
        }
    }

    /// Adds an attachment.
    pub fn attach(mut self, key: &'a str, value: &'a str) -> Self {
        self.attachments.push((key, value));
        self
    }

    /// Adds `batchJob=true`, the attachment the batch route matches, when `batch` holds.
    pub fn batch(self, batch: bool) -> Self {
        if batch {
            self.attach("batchJob", "true")
        } else {
            self
        }
    }

    /// Runs the client to completion (bounded) and returns its JSON lines.
    pub fn run(self, scratch: &Scratch) -> TestResult<Vec<Line>> {
        let mut command = self.client.command();
        command
            .arg("--addr")
            .arg(self.addr)
            .arg("--count")
            .arg(self.count.to_string());
        command.arg("--name").arg(self.name);
        command
            .arg("--timeout-ms")
            .arg(CLIENT_TIMEOUT_MS.to_string());
        for (k, v) in &self.attachments {
            command.arg("--attach").arg(format!("{k}={v}"));
        }
        if let Some(interface) = self.interface {
            command.arg("--interface").arg(interface);
        }
        command.args(&self.extra);
        let what = format!(
            "{:?}-{}-{}",
            self.client,
            self.name,
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mut process = ChildGuard::spawn(command, &what, scratch)?;
        let calls = u64::from(self.count) + 2;
        process.wait(Duration::from_millis(CLIENT_TIMEOUT_MS * calls + 15_000))?;
        let stdout = process.stdout();
        let lines = stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| Line::parse(l).map_err(|e| format!("{what}: bad output line {l}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if !lines.iter().any(|l| l.bool("done") == Some(true)) {
            return Err(format!(
                "{what} did not finish: {stdout} / {}",
                process.stderr_tail()
            )
            .into());
        }
        Ok(lines)
    }
}

/// The call results among a client's lines (those with a `call` index).
pub fn calls(lines: &[Line]) -> Vec<&Line> {
    lines.iter().filter(|l| l.num("call").is_some()).collect()
}

/// The result of a run of exactly one call.
pub fn single_call(lines: &[Line]) -> TestResult<&Line> {
    match calls(lines).as_slice() {
        [line] => Ok(line),
        _ => Err(format!("expected one call, got {lines:?}").into()),
    }
}

/// The reply of a run of exactly one call, which must have succeeded, taken apart.
pub fn single_reply(lines: &[Line]) -> TestResult<Reply> {
    match single_call(lines)? {
        line if line.bool("ok") == Some(true) => {
            Reply::parse(line.str("reply").unwrap_or_default())
        }
        line => Err(format!("the call failed: {line:?}").into()),
    }
}

/// The `"heartbeat": true` line of a run.
pub fn heartbeat_line(lines: &[Line]) -> TestResult<&Line> {
    Ok(lines
        .iter()
        .find(|l| l.bool("heartbeat") == Some(true))
        .ok_or_else(|| format!("no heartbeat line in {lines:?}"))?)
}
