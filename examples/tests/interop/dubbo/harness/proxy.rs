//! The proxy under test: the engine in this process, or the `metaprotocol-proxy` binary.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::{ChildGuard, Scratch, TestResult, wait_until};

/// The engine in this process, on a multi-threaded runtime of its own so that the blocking
/// client runs of the test thread never stall it. Shut down (drained) when dropped.
pub struct InProcessProxy {
    runtime: tokio::runtime::Runtime,
    proxy: Option<metaprotocol_router::Proxy>,
    addr: SocketAddr,
}

impl InProcessProxy {
    /// Starts `yaml`, whose listener `dubbo-in` the clients use.
    pub fn start(yaml: &str) -> TestResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let config = metaprotocol_router::Config::from_yaml(yaml)?;
        let codecs = metaprotocol_examples::codec_registry();
        let proxy = runtime.block_on(metaprotocol_router::Proxy::start(config, codecs))?;
        let addr = proxy
            .listener_addr("dubbo-in")
            .ok_or("listener dubbo-in not bound")?;
        Ok(Self {
            runtime,
            proxy: Some(proxy),
            addr,
        })
    }

    /// The address of listener `dubbo-in`.
    pub fn addr(&self) -> String {
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

/// `metaprotocol-proxy run --config FILE` as a child process, killed when dropped.
pub struct BinaryProxy {
    process: ChildGuard,
}

impl BinaryProxy {
    /// Writes `yaml` to a file, runs the binary on it and waits until `listen` accepts.
    pub fn start(yaml: &str, listen: &str, scratch: &Scratch) -> TestResult<Self> {
        let config = scratch.path("proxy.yaml");
        fs::write(&config, yaml)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_metaprotocol-proxy"));
        command.arg("run").arg("--config").arg(&config);
        let mut process = ChildGuard::spawn(command, "metaprotocol-proxy", scratch)?;
        wait_until(
            Duration::from_secs(20),
            "the proxy binary to listen",
            || {
                process.check_running()?;
                Ok(TcpStream::connect(listen).is_ok())
            },
        )?;
        Ok(Self { process })
    }

    /// Fails if the binary has exited (crashed) since it started.
    pub fn check_running(&mut self) -> TestResult {
        self.process.check_running()
    }
}
