//! The proxy under test: the engine started from a YAML config (in an async test, or in a
//! synchronous one on a runtime of its own), or the `metaprotocol-proxy` binary as a child.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use metaprotocol_router::{ClusterStatus, Config, Proxy};

use super::TestResult;
use super::process::{ChildGuard, Scratch, wait_until};

/// How long the in-process engine may take to drain when a test drops it.
const DRAIN: Duration = Duration::from_secs(5);

/// How long the binary may take to start listening.
const BINARY_START: Duration = Duration::from_secs(20);

/// Starts the engine on `yaml` with this package's codecs, on the current runtime.
pub async fn start_engine(yaml: &str) -> TestResult<Proxy> {
    let config = Config::from_yaml(yaml)?;
    Ok(Proxy::start(config, metaprotocol_examples::codec_registry()).await?)
}

/// Where `proxy`'s listener `name` is bound.
pub fn listener_addr(proxy: &Proxy, name: &str) -> TestResult<SocketAddr> {
    Ok(proxy
        .listener_addr(name)
        .ok_or(format!("listener {name} is not bound"))?)
}

/// The value of the series `series` (`name{labels}`, as exposed) in `proxy`'s metrics; 0 when
/// it is not there.
pub fn metric(proxy: &Proxy, series: &str) -> f64 {
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The engine in this process, on a multi-threaded runtime of its own so that the blocking
/// client runs of the test thread never stall it. Shut down (drained) when dropped.
pub struct InProcessProxy {
    runtime: tokio::runtime::Runtime,
    proxy: Option<Proxy>,
}

impl InProcessProxy {
    /// Starts the engine on `yaml`.
    pub fn start(yaml: &str) -> TestResult<Self> {
        let runtime = super::runtime()?;
        let proxy = runtime.block_on(start_engine(yaml))?;
        Ok(Self {
            runtime,
            proxy: Some(proxy),
        })
    }

    /// Where listener `name` is bound.
    pub fn addr(&self, name: &str) -> TestResult<SocketAddr> {
        let proxy = self.proxy.as_ref().ok_or("the proxy is shut down")?;
        listener_addr(proxy, name)
    }

    /// Every cluster's endpoints and their health, as `/clusters` shows them.
    pub fn clusters(&self) -> Vec<ClusterStatus> {
        self.proxy.as_ref().map(Proxy::clusters).unwrap_or_default()
    }

    /// The metrics exposition, as `/metrics` serves it.
    pub fn metrics(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| p.metrics().render())
            .unwrap_or_default()
    }

    /// The active health checks of `cluster` that ended with `outcome` (`success`, `failure`)
    /// so far.
    pub fn health_checks(&self, cluster: &str, outcome: &str) -> u64 {
        let series = format!(
            "metaprotocol_health_checks_total{{cluster=\"{cluster}\",outcome=\"{outcome}\"}} "
        );
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// True while the endpoint at `address` fails its active health checks.
    pub fn failing_checks(&self, address: &str) -> bool {
        self.clusters()
            .iter()
            .flat_map(|c| c.endpoints.iter())
            .any(|e| e.address.to_string() == address && e.failing_active_checks)
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            // The timer must be created inside the runtime, hence the async block.
            let drained = async { tokio::time::timeout(DRAIN, proxy.shutdown()).await };
            let _ = self.runtime.block_on(drained);
        }
    }
}

/// `metaprotocol-proxy run --config FILE` as a child process, killed when dropped.
pub struct BinaryProxy {
    process: ChildGuard,
    config: PathBuf,
}

impl BinaryProxy {
    /// Writes `yaml` to a file, runs the binary on it with `extra_args` after `run`, and waits
    /// until `listen` accepts connections.
    pub fn start(
        yaml: &str,
        extra_args: &[&str],
        listen: SocketAddr,
        scratch: &Scratch,
    ) -> TestResult<Self> {
        let config = scratch.path("proxy.yaml");
        fs::write(&config, yaml)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_metaprotocol-proxy"));
        command
            .arg("run")
            .args(extra_args)
            .arg("--config")
            .arg(&config);
        let mut process = ChildGuard::spawn(command, "metaprotocol-proxy", scratch)?;
        wait_until(BINARY_START, "the proxy binary to listen", || {
            process.check_running()?;
            Ok(TcpStream::connect(listen).is_ok())
        })?;
        Ok(Self { process, config })
    }

    /// The config file the binary runs on (and watches for route changes).
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The binary's process id, to send it a signal.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The end of what the binary said on stderr (its logs).
    pub fn stderr_tail(&self) -> String {
        self.process.stderr_tail()
    }

    /// Fails if the binary has exited (crashed) since it started.
    pub fn check_running(&mut self) -> TestResult {
        self.process.check_running()
    }

    /// Waits for the binary to exit (after a signal) and returns how it did.
    pub fn wait(&mut self, within: Duration) -> TestResult<ExitStatus> {
        self.process.wait(within)
    }
}
