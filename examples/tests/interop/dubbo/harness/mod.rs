//! The harness of `examples/tests/dubbo_interop.rs`: child processes with guards, the provider
//! and client scripts of this folder, their output, and the proxy in or out of process.
//!
//! Everything listens on and talks to 127.0.0.1 only, every wait has a deadline, and every child
//! process is killed when its guard drops.

mod json_line;
mod peers;
mod process;
mod proxy;

use std::error::Error;
use std::path::PathBuf;

pub use json_line::Line;
pub use peers::{
    ALL_CLIENTS, Client, Provider, Reply, Run, calls, heartbeat_line, single_call, single_reply,
    start_providers,
};
pub use process::{ChildGuard, Scratch, free_port, wait_until};
pub use proxy::{BinaryProxy, InProcessProxy};

/// Every harness step fails with a message; the test threads need it `Send`.
pub type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The demo service every peer serves or calls.
pub const INTERFACE: &str = "org.apache.dubbo.samples.basic.api.DemoService";
/// The attachments every client sends unless told otherwise (as in the golden captures).
pub const TRACE: (&str, &str) = ("x-trace-id", "abc123");
/// See [`TRACE`].
pub const TENANT: (&str, &str) = ("tenant", "t1");
/// How long a client waits for one reply before it reports a time-out.
pub const CLIENT_TIMEOUT_MS: u64 = 5000;

/// This folder: the scripts, `node_modules/` and `.venv/` that `setup.sh` installs.
fn interop_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dubbo"))
}

fn python() -> PathBuf {
    interop_dir().join(".venv/bin/python")
}

/// `Ok(true)` when the tools are installed; `Ok(false)` (the test is skipped) when they are not
/// and `METAPROTOCOL_REQUIRE_INTEROP` is not `1`; an error when they are required but missing.
pub fn tools_ready() -> TestResult<bool> {
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
        return Err(format!(
            "METAPROTOCOL_REQUIRE_INTEROP=1 but {missing:?} are missing: \
             run examples/tests/interop/dubbo/setup.sh"
        )
        .into());
    }
    println!("skipped: run examples/tests/interop/dubbo/setup.sh");
    Ok(false)
}
