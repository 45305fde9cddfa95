//! End-to-end Dubbo2 interop: real implementations from npm and PyPI talk through the proxy.
//!
//! Providers: sofa-rpc-node + dubbo-remoting (`node_provider.js`, answering as `v1`, labels
//! `version: v1, service_group: user`) and dubbo-py (`py_provider.py`, `v2`, `batchjob`).
//! Clients: dubbo2.js, sofa-rpc-node, dubbo-py and dubbo-ssl-python, each a script under
//! `tests/interop/dubbo/` printing one JSON line per call. The providers' replies name the
//! provider and every attachment it received, so routing and mutation are checked at the far end.
//!
//! The tools are installed by `examples/tests/interop/dubbo/setup.sh`. Without them each test
//! prints `skipped: ...` and passes, unless `METAPROTOCOL_REQUIRE_INTEROP=1` (CI) makes it fail.
//! Every child process is killed when its guard drops, every wait has a deadline, and everything
//! listens on and talks to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const INTERFACE: &str = "org.apache.dubbo.samples.basic.api.DemoService";
const TRACE: (&str, &str) = ("x-trace-id", "abc123");
const TENANT: (&str, &str) = ("tenant", "t1");
/// How long a client waits for one reply before it reports a time-out.
const CLIENT_TIMEOUT_MS: u64 = 5000;

fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dubbo"))
}

fn python() -> PathBuf {
    interop_dir().join(".venv/bin/python")
}

/// `Ok(true)` when the tools are installed; `Ok(false)` (test skipped) when they are not and
/// `METAPROTOCOL_REQUIRE_INTEROP` is unset; an error when they are required but missing.
fn tools_ready() -> TestResult<bool> {
    let dir = interop_dir();
    let required = [
        dir.join("node_modules/dubbo2.js/package.json"),
        dir.join("node_modules/sofa-rpc-node/package.json"),
        dir.join("node_modules/dubbo-remoting/package.json"),
        python(),
    ];
    let missing: Vec<_> = required.iter().filter(|p| !p.exists()).collect();
    if missing.is_empty() {
        return Ok(true);
    }
    if std::env::var("METAPROTOCOL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        return Err(format!("METAPROTOCOL_REQUIRE_INTEROP=1 but {missing:?} are missing: run examples/tests/interop/dubbo/setup.sh").into());
    }
    println!("skipped: run examples/tests/interop/dubbo/setup.sh");
    Ok(false)
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then released).
fn free_port() -> TestResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A scratch directory for configs, logs and provider call records, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> TestResult<Self> {
        let dir = std::env::temp_dir().join(format!("metaprotocol-{test}-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped when dropped; its stdout and stderr go to files.
struct ChildGuard {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ChildGuard {
    fn spawn(mut command: Command, what: &str, scratch: &Scratch) -> TestResult<Self> {
        let stdout = scratch.path(&format!("{what}.out"));
        let stderr = scratch.path(&format!("{what}.err"));
        let child = command
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Self {
            child,
            what: what.to_owned(),
            stdout,
            stderr,
        })
    }

    fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What the process said on stderr, for failure messages.
    fn stderr_tail(&self) -> String {
        let text = fs::read_to_string(&self.stderr).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }

    /// Fails if the process has already exited.
    fn check_running(&mut self) -> TestResult {
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

    /// Waits for the process to exit on its own, killing it at the deadline.
    fn wait(&mut self, within: Duration) -> TestResult {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        Err(format!(
            "{} still running after {within:?}; stdout: {} stderr: {}",
            self.what,
            self.stdout(),
            self.stderr_tail()
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
fn wait_until(
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
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Providers

/// A running provider process and the file it records arriving calls in.
struct Provider {
    name: &'static str,
    port: u16,
    record: PathBuf,
    _process: ChildGuard,
}

#[derive(Clone, Copy)]
enum ProviderKind {
    /// sofa-rpc-node + dubbo-remoting.
    Node,
    /// dubbo-py.
    Python,
}

impl Provider {
    fn start(kind: ProviderKind, name: &'static str, scratch: &Scratch) -> TestResult<Self> {
        let port = free_port()?;
        let record = scratch.path(&format!("{name}.calls"));
        let mut command = match kind {
            ProviderKind::Node => {
                let mut c = Command::new("node");
                c.arg("node_provider.js");
                c
            }
            ProviderKind::Python => {
                let mut c = Command::new(python());
                c.arg("py_provider.py");
                c
            }
        };
        command
            .arg("--port")
            .arg(port.to_string())
            .arg("--name")
            .arg(name)
            .arg("--record")
            .arg(&record);
        let mut process = ChildGuard::spawn(command, &format!("provider-{name}"), scratch)?;
        wait_until(
            Duration::from_secs(20),
            &format!("provider {name} to listen"),
            || {
                process.check_running()?;
                Ok(process.stdout().contains("ready"))
            },
        )?;
        Ok(Self {
            name,
            port,
            record,
            _process: process,
        })
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The calls recorded so far: (kind `twoway`/`oneway`, name, attachments).
    fn calls(&self) -> Vec<(String, String, BTreeMap<String, String>)> {
        let text = fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let _provider = fields.next()?;
                let kind = fields.next()?.to_owned();
                let name = fields.next()?.to_owned();
                Some((kind, name, attachment_pairs(fields.next().unwrap_or(""))))
            })
            .collect()
    }
}

/// The node provider as `v1` (group `user`) and the Python provider as `v2` (group `batchjob`).
fn start_providers(scratch: &Scratch) -> TestResult<(Provider, Provider)> {
    Ok((
        Provider::start(ProviderKind::Node, "v1", scratch)?,
        Provider::start(ProviderKind::Python, "v2", scratch)?,
    ))
}

/// Parses the providers' `k=v,k=v` attachment text.
fn attachment_pairs(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A provider's reply `Hello, <name> from <provider> attachments=<k=v,...>`, taken apart.
#[derive(Debug)]
struct Reply {
    greeting: String,
    provider: String,
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

    fn attachment(&self, key: &str) -> Option<&str> {
        self.attachments.get(key).map(String::as_str)
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    DubboJs,
    Sofa,
    DubboPy,
    DubboSsl,
}

const ALL_CLIENTS: [Client; 4] = [
    Client::DubboJs,
    Client::Sofa,
    Client::DubboPy,
    Client::DubboSsl,
];

impl Client {
    fn command(self) -> Command {
        let (program, script) = match self {
            Client::DubboJs => (PathBuf::from("node"), "dubbojs_client.js"),
            Client::Sofa => (PathBuf::from("node"), "sofa_client.js"),
            Client::DubboPy => (python(), "dubbopy_client.py"),
            Client::DubboSsl => (python(), "dubbossl_client.py"),
        };
        let mut command = Command::new(program);
        command.arg(script);
        command
    }
}

/// Numbers client runs so each gets its own log files.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// One client run: `count` calls of `sayHello(name)` with `attachments`, plus extra flags.
struct Run<'a> {
    client: Client,
    addr: &'a str,
    name: &'a str,
    count: u32,
    attachments: Vec<(&'a str, &'a str)>,
    interface: Option<&'a str>,
    extra: Vec<&'a str>,
}

impl<'a> Run<'a> {
    fn hello(client: Client, addr: &'a str) -> Self {
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

    fn attach(mut self, key: &'a str, value: &'a str) -> Self {
        self.attachments.push((key, value));
        self
    }

    /// Runs the client to completion (bounded) and returns its JSON lines.
    fn run(self, scratch: &Scratch) -> TestResult<Vec<Line>> {
        let mut command = self.client.command();
        command
            .arg("--addr")
            .arg(self.addr)
            .arg("--count")
            .arg(self.count.to_string())
            .arg("--name")
            .arg(self.name)
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
        let bound = Duration::from_millis(CLIENT_TIMEOUT_MS * (u64::from(self.count) + 2) + 15_000);
        process.wait(bound)?;
        let lines = process
            .stdout()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| Line::parse(l).map_err(|e| format!("{what}: bad output line {l}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if !lines.iter().any(|l| l.bool("done") == Some(true)) {
            return Err(format!(
                "{what} did not finish: {} / {}",
                process.stdout(),
                process.stderr_tail()
            )
            .into());
        }
        Ok(lines)
    }
}

/// The call results among a client's lines (those with a `call` index).
fn calls(lines: &[Line]) -> Vec<&Line> {
    lines.iter().filter(|l| l.num("call").is_some()).collect()
}

/// The single successful call's reply, taken apart.
fn single_reply(lines: &[Line]) -> TestResult<Reply> {
    match calls(lines).as_slice() {
        [line] if line.bool("ok") == Some(true) => {
            Reply::parse(line.str("reply").unwrap_or_default())
        }
        other => Err(format!("expected one successful call, got {other:?}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The clients' output: flat JSON objects (strings, numbers, booleans, null).

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// One JSON line a client printed.
#[derive(Debug)]
struct Line(BTreeMap<String, Json>);

impl Line {
    fn parse(text: &str) -> Result<Self, String> {
        FlatJson {
            chars: text.trim().chars().peekable(),
        }
        .object()
        .map(Self)
    }

    fn str(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(Json::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn num(&self, key: &str) -> Option<f64> {
        match self.0.get(key) {
            Some(Json::Num(n)) => Some(*n),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key) {
            Some(Json::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

/// A parser for the one shape the client scripts print: `{"key": scalar, ...}`.
struct FlatJson<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl FlatJson<'_> {
    fn object(&mut self) -> Result<BTreeMap<String, Json>, String> {
        let mut out = BTreeMap::new();
        self.expect('{')?;
        if self.eat('}') {
            return Ok(out);
        }
        loop {
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            out.insert(key, value);
            if !self.eat(',') {
                self.expect('}')?;
                return Ok(out);
            }
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    fn eat(&mut self, want: char) -> bool {
        self.skip_ws();
        self.chars.next_if_eq(&want).is_some()
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        if self.eat(want) {
            Ok(())
        } else {
            Err(format!("expected {want:?}"))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        for want in word.chars() {
            if self.chars.next() != Some(want) {
                return Err(format!("expected {word}"));
            }
        }
        Ok(value)
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_ws();
        match self.chars.peek() {
            Some('"') => self.string().map(Json::Str),
            Some('t') => self.literal("true", Json::Bool(true)),
            Some('f') => self.literal("false", Json::Bool(false)),
            Some('n') => self.literal("null", Json::Null),
            Some(c) if *c == '-' || c.is_ascii_digit() => {
                let mut number = String::new();
                while let Some(c) = self
                    .chars
                    .next_if(|c| c.is_ascii_digit() || "+-.eE".contains(*c))
                {
                    number.push(c);
                }
                number
                    .parse()
                    .map(Json::Num)
                    .map_err(|e| format!("number {number}: {e}"))
            }
            other => Err(format!(
                "unexpected {other:?} (nested values are not part of the format)"
            )),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            match self.chars.next().ok_or("unterminated string")? {
                '"' => return Ok(out),
                '\\' => match self.chars.next().ok_or("unterminated escape")? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => out.push(self.unicode_escape()?),
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits: String = (0..4).filter_map(|_| self.chars.next()).collect();
        u32::from_str_radix(&digits, 16).map_err(|e| format!("\\u{digits}: {e}"))
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            if self.chars.next() != Some('\\') || self.chars.next() != Some('u') {
                return Err("lone surrogate".into());
            }
            let low = self.hex4()?;
            0x10000 + ((first - 0xd800) << 10) + low.saturating_sub(0xdc00)
        } else {
            first
        };
        Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy

/// The proxy config: `batchJob=true` goes to the batchjob provider (v2), the rest of
/// DemoService to the user provider (v1); both routes mark the request so the provider shows
/// which route it took, and the batch route drops the `debug` attachment.
fn proxy_config(listen: &str, v1: &Provider, v2: &Provider, route_timeout: &str) -> String {
    format!(
        r#"
listeners:
  - name: dubbo-in
    address: {listen}
    protocol: dubbo
    route_config: interop-routes
route_configs:
  - name: interop-routes
    routes:
      - name: batch-jobs
        match:
          metadata:
            - {{ key: interface, exact: {INTERFACE} }}
            - {{ key: batchJob, exact: "true" }}
        route: {{ cluster: demo-provider, subset: {{ service_group: batchjob }} }}
        timeout: {route_timeout}
        request_mutation: {{ set: {{ x-routed-by: batch }}, remove: [debug] }}
      - name: users
        match:
          metadata:
            - {{ key: interface, exact: {INTERFACE} }}
        route: {{ cluster: demo-provider, subset: {{ service_group: user }} }}
        timeout: {route_timeout}
        request_mutation: {{ set: {{ x-routed-by: user }} }}
clusters:
  - name: demo-provider
    connect_timeout: 1s
    endpoints:
      - {{ address: "{v1}", labels: {{ version: v1, service_group: user }} }}
      - {{ address: "{v2}", labels: {{ version: v2, service_group: batchjob }} }}
"#,
        v1 = v1.addr(),
        v2 = v2.addr(),
    )
}

/// The engine in this process, on a multi-threaded runtime of its own so the blocking client
/// runs of the test thread never stall it.
struct InProcessProxy {
    runtime: tokio::runtime::Runtime,
    proxy: Option<metaprotocol_router::Proxy>,
    addr: SocketAddr,
}

impl InProcessProxy {
    fn start(yaml: &str) -> TestResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let config = metaprotocol_router::Config::from_yaml(yaml)?;
        let proxy = runtime.block_on(metaprotocol_router::Proxy::start(
            config,
            metaprotocol_examples::codec_registry(),
        ))?;
        let addr = proxy
            .listener_addr("dubbo-in")
            .ok_or("listener dubbo-in not bound")?;
        Ok(Self {
            runtime,
            proxy: Some(proxy),
            addr,
        })
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            // The timer must be created inside the runtime, hence the async block.
            let drained =
                async { tokio::time::timeout(Duration::from_secs(5), proxy.shutdown()).await };
            let _ = self.runtime.block_on(drained);
        }
    }
}

/// Providers plus an in-process proxy in front of them.
struct Fixture {
    scratch: Scratch,
    v1: Provider,
    v2: Provider,
    proxy: InProcessProxy,
}

impl Fixture {
    fn start(test: &str, route_timeout: &str) -> TestResult<Self> {
        let scratch = Scratch::new(test)?;
        let (v1, v2) = start_providers(&scratch)?;
        let proxy = InProcessProxy::start(&proxy_config("127.0.0.1:0", &v1, &v2, route_timeout))?;
        Ok(Self {
            scratch,
            v1,
            v2,
            proxy,
        })
    }
}

/// Checks a reply came from `provider` via the route that sets `x-routed-by: routed_by`, with
/// the client's own attachments intact.
fn assert_routed(client: Client, reply: &Reply, provider: &str, routed_by: &str) {
    assert_eq!(reply.greeting, "Hello, w1", "{client:?}: {reply:?}");
    assert_eq!(
        reply.provider, provider,
        "{client:?} went to the wrong provider: {reply:?}"
    );
    assert_eq!(
        reply.attachment("x-routed-by"),
        Some(routed_by),
        "{client:?}: mutation not applied: {reply:?}"
    );
    assert_eq!(
        reply.attachment(TRACE.0),
        Some(TRACE.1),
        "{client:?}: {reply:?}"
    );
    assert_eq!(
        reply.attachment(TENANT.0),
        Some(TENANT.1),
        "{client:?}: {reply:?}"
    );
}

/// Every client reaches both routes: plain calls go to v1 marked `user`, `batchJob=true` calls
/// to v2 marked `batch` with `debug` removed.
fn check_routing(addr: &str, scratch: &Scratch) -> TestResult {
    for client in ALL_CLIENTS {
        let user = single_reply(&Run::hello(client, addr).run(scratch)?)?;
        assert_routed(client, &user, "v1", "user");

        let batch = single_reply(
            &Run::hello(client, addr)
                .attach("batchJob", "true")
                .attach("debug", "1")
                .run(scratch)?,
        )?;
        assert_routed(client, &batch, "v2", "batch");
        assert_eq!(
            batch.attachment("batchJob"),
            Some("true"),
            "{client:?}: {batch:?}"
        );
        assert_eq!(
            batch.attachment("debug"),
            None,
            "{client:?}: `remove: [debug]` not applied: {batch:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Step zero, no proxy: every client library talks to every provider library directly, so a
/// failure through the proxy is the proxy's.
#[test]
fn every_client_reaches_every_provider_directly() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-direct")?;
    let (v1, v2) = start_providers(&scratch)?;
    for provider in [&v1, &v2] {
        let addr = provider.addr();
        for client in ALL_CLIENTS {
            let reply = single_reply(&Run::hello(client, &addr).run(&scratch)?)?;
            assert_eq!(
                reply.greeting, "Hello, w1",
                "{client:?} -> {}",
                provider.name
            );
            assert_eq!(reply.provider, provider.name);
            assert_eq!(
                reply.attachment(TRACE.0),
                Some(TRACE.1),
                "{client:?} -> {}: {reply:?}",
                provider.name
            );
            assert_eq!(
                reply.attachment(TENANT.0),
                Some(TENANT.1),
                "{client:?} -> {}: {reply:?}",
                provider.name
            );
        }
    }
    Ok(())
}

/// The `metaprotocol-proxy run --config FILE` binary routes every real client by attachment and
/// applies the request mutation the provider then sees.
#[test]
fn binary_routes_real_clients_by_attachment() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-binary")?;
    let (v1, v2) = start_providers(&scratch)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let config = scratch.path("proxy.yaml");
    fs::write(&config, proxy_config(&listen, &v1, &v2, "3s"))?;

    let mut command = Command::new(env!("CARGO_BIN_EXE_metaprotocol-proxy"));
    command.arg("run").arg("--config").arg(&config);
    let mut proxy = ChildGuard::spawn(command, "metaprotocol-proxy", &scratch)?;
    wait_until(
        Duration::from_secs(20),
        "the proxy binary to listen",
        || {
            proxy.check_running()?;
            Ok(TcpStream::connect(&listen).is_ok())
        },
    )?;

    check_routing(&listen, &scratch)?;
    proxy.check_running()
}

/// The in-process engine routes every real client the same way.
#[test]
fn in_process_routes_real_clients_by_attachment() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let fx = Fixture::start("dubbo-routing", "3s")?;
    check_routing(&fx.proxy.addr(), &fx.scratch)?;
    let seen = fx.v2.calls();
    assert!(
        seen.iter().all(
            |(_, _, attachments)| attachments.get("x-routed-by").map(String::as_str)
                == Some("batch")
        ),
        "v2 saw a request that did not come through the batch route: {seen:?}"
    );
    Ok(())
}

/// A call no route matches gets a Dubbo SERVICE_NOT_FOUND (60) error with a message, at once.
#[test]
fn no_route_is_answered_with_status_60() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let fx = Fixture::start("dubbo-noroute", "3s")?;
    let addr = fx.proxy.addr();
    for client in ALL_CLIENTS {
        let run = Run {
            interface: Some("org.example.NoSuchService"),
            ..Run::hello(client, &addr)
        };
        let lines = run.run(&fx.scratch)?;
        let [line] = calls(&lines)[..] else {
            return Err(format!("{client:?}: expected one call, got {lines:?}").into());
        };
        assert_eq!(line.bool("ok"), Some(false), "{client:?}: {line:?}");
        assert_eq!(line.num("status"), Some(60.0), "{client:?}: {line:?}");
        assert!(
            !line.str("message").unwrap_or_default().is_empty(),
            "{client:?}: no message: {line:?}"
        );
        let ms = line.num("ms").unwrap_or(f64::MAX);
        assert!(
            ms < (CLIENT_TIMEOUT_MS / 2) as f64,
            "{client:?} waited {ms} ms for the local reply: {line:?}"
        );
    }
    assert!(
        fx.v1.calls().is_empty() && fx.v2.calls().is_empty(),
        "an unrouted call reached a provider"
    );
    Ok(())
}

/// Errors the providers raise reach every client with the provider's own status and message:
/// sofa-rpc-node answers 80 SERVER_ERROR, dubbo-py 90.
#[test]
fn provider_errors_pass_through() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let fx = Fixture::start("dubbo-errors", "3s")?;
    let addr = fx.proxy.addr();
    for client in ALL_CLIENTS {
        for (batch, status) in [(false, 80.0), (true, 90.0)] {
            let mut run = Run {
                name: "crash",
                ..Run::hello(client, &addr)
            };
            if batch {
                run = run.attach("batchJob", "true");
            }
            let lines = run.run(&fx.scratch)?;
            let [line] = calls(&lines)[..] else {
                return Err(format!("{client:?}: expected one call, got {lines:?}").into());
            };
            assert_eq!(line.bool("ok"), Some(false), "{client:?}: {line:?}");
            assert_eq!(line.num("status"), Some(status), "{client:?}: {line:?}");
            assert_eq!(line.str("message"), Some("boom"), "{client:?}: {line:?}");
        }
    }
    Ok(())
}

/// A provider slower than the route timeout: the proxy answers with an error before the
/// client's own time-out, and the clients stay usable.
#[test]
fn route_timeout_answers_before_the_client_gives_up() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let fx = Fixture::start("dubbo-timeout", "500ms")?;
    let addr = fx.proxy.addr();
    for client in ALL_CLIENTS {
        let lines = Run {
            name: "sleep-2000",
            count: 2,
            ..Run::hello(client, &addr)
        }
        .run(&fx.scratch)?;
        let results = calls(&lines);
        assert_eq!(results.len(), 2, "{client:?}: {lines:?}");
        for line in results {
            assert_eq!(line.bool("ok"), Some(false), "{client:?}: {line:?}");
            assert!(
                line.num("status").is_some(),
                "{client:?}: no status, so the client timed out: {line:?}"
            );
            let ms = line.num("ms").unwrap_or(f64::MAX);
            assert!(
                ms < 1900.0,
                "{client:?}: the timeout reply took {ms} ms: {line:?}"
            );
        }
    }
    Ok(())
}

/// dubbo-py's one-way requests reach the routed provider, and the reply the provider sends
/// anyway (a quirk of both provider libraries) is not passed on to the client.
#[test]
fn one_way_requests_reach_the_provider() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let fx = Fixture::start("dubbo-oneway", "3s")?;
    let addr = fx.proxy.addr();
    for (provider, batch) in [(&fx.v1, false), (&fx.v2, true)] {
        let mut run = Run {
            name: "ow",
            count: 3,
            extra: vec!["--oneway"],
            ..Run::hello(Client::DubboPy, &addr)
        };
        if batch {
            run = run.attach("batchJob", "true");
        }
        let lines = run.run(&fx.scratch)?;
        let done = lines
            .iter()
            .find(|l| l.bool("done") == Some(true))
            .ok_or("no summary line")?;
        assert_eq!(
            done.num("stray"),
            Some(0.0),
            "a reply to a one-way request reached the client: {lines:?}"
        );
        wait_until(
            Duration::from_secs(5),
            &format!("3 one-way calls at {}", provider.name),
            || {
                Ok(provider
                    .calls()
                    .iter()
                    .filter(|(kind, name, _)| kind == "oneway" && name == "ow")
                    .count()
                    >= 3)
            },
        )?;
        let calls = provider.calls();
        assert!(
            calls.iter().all(|(kind, _, _)| kind == "oneway"),
            "{}: {calls:?}",
            provider.name
        );
        assert!(
            calls
                .iter()
                .all(|(_, _, a)| a.get(TRACE.0).map(String::as_str) == Some(TRACE.1)),
            "{}: {calls:?}",
            provider.name
        );
    }
    Ok(())
}

/// A proxy whose only upstream is a closed port: whatever answers a client is the proxy itself.
fn proxy_before_a_closed_port() -> TestResult<InProcessProxy> {
    let closed = format!("127.0.0.1:{}", free_port()?);
    InProcessProxy::start(&format!(
        r#"
listeners:
  - {{ name: dubbo-in, address: 127.0.0.1:0, protocol: dubbo, route_config: nowhere }}
route_configs:
  - name: nowhere
    routes:
      - route: {{ cluster: closed }}
clusters:
  - name: closed
    connect_timeout: 200ms
    endpoints: [ {{ address: "{closed}" }} ]
"#
    ))
}

/// dubbo-ssl-python's Java-style two-way idle heartbeat (flag 0xe2) is answered by the proxy,
/// with status 20 (dubbo-ssl-python rejects any other). The client opens its connection with a
/// call, which fails (nothing listens upstream), then idles for a second.
#[test]
fn two_way_idle_heartbeat_is_answered_by_the_proxy() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-heartbeat-2way")?;
    let proxy = proxy_before_a_closed_port()?;
    let addr = proxy.addr();
    let lines = Run {
        extra: vec!["--heartbeat-idle-secs", "1"],
        ..Run::hello(Client::DubboSsl, &addr)
    }
    .run(&scratch)?;
    let [call] = calls(&lines)[..] else {
        return Err(format!("dubbo-ssl-python: expected one call, got {lines:?}").into());
    };
    assert_eq!(
        call.bool("ok"),
        Some(false),
        "a call to a closed upstream succeeded: {call:?}"
    );
    assert!(
        call.num("status").is_some(),
        "the call to a closed upstream got no error reply: {call:?}"
    );
    let heartbeat = lines
        .iter()
        .find(|l| l.bool("heartbeat") == Some(true))
        .ok_or("no heartbeat line")?;
    assert_eq!(
        heartbeat.bool("ok"),
        Some(true),
        "dubbo-ssl-python heartbeat: {lines:?}"
    );
    assert_eq!(
        heartbeat.num("status"),
        Some(20.0),
        "dubbo-ssl-python heartbeat: {lines:?}"
    );
    Ok(())
}

/// dubbo-py's `send_heartbeat_request` is a one-way event (flag 0xa2). Both provider libraries
/// answer it (golden `dubbopy__*__heartbeat`); Java Dubbo answers only two-way heartbeats, and
/// so does the dubbo codec today.
#[test]
#[ignore = "the dubbo codec answers only two-way heartbeats; whether 0xa2 gets a reply is the lead's call"]
fn one_way_heartbeat_is_answered_by_the_proxy() -> TestResult {
    if !tools_ready()? {
        return Ok(());
    }
    let scratch = Scratch::new("dubbo-heartbeat-1way")?;
    let proxy = proxy_before_a_closed_port()?;
    let addr = proxy.addr();
    let lines = Run {
        count: 0,
        extra: vec!["--heartbeat"],
        ..Run::hello(Client::DubboPy, &addr)
    }
    .run(&scratch)?;
    let heartbeat = lines
        .iter()
        .find(|l| l.bool("heartbeat") == Some(true))
        .ok_or("no heartbeat line")?;
    assert_eq!(
        heartbeat.bool("ok"),
        Some(true),
        "dubbo-py heartbeat: {lines:?}"
    );
    assert_eq!(
        heartbeat.num("id"),
        Some(1_000_001.0),
        "dubbo-py heartbeat: {lines:?}"
    );
    Ok(())
}

#[test]
fn flat_json_lines_parse() -> Result<(), String> {
    let line = Line::parse(
        r#"{"client": "dubbopy", "call": 0, "ok": false, "status": null, "message": "a \"q\" \u00e9\n", "ms": 12}"#,
    )?;
    assert_eq!(line.str("client"), Some("dubbopy"));
    assert_eq!(line.num("call"), Some(0.0));
    assert_eq!(line.bool("ok"), Some(false));
    assert_eq!(line.0.get("status"), Some(&Json::Null));
    assert_eq!(line.str("message"), Some("a \"q\" \u{e9}\n"));
    assert!(Line::parse(r#"{"nested": {"a": 1}}"#).is_err());
    assert!(Line::parse(r#"{"a": "unterminated}"#).is_err());
    Ok(())
}
