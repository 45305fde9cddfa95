//! The harness of `examples/tests/dubbo_interop.rs`: the provider and client scripts of this
//! folder and their output. Child processes, scratch files, waits and the proxy under test come
//! from the shared `tests/support`.
//!
//! Everything listens on and talks to 127.0.0.1 only, every wait has a deadline, and every child
//! process is killed when its guard drops.

mod json_line;
mod peers;

use crate::support::TestResult;
use crate::support::interop::Suite;

pub use json_line::Line;
pub use peers::{
    ALL_CLIENTS, Client, Provider, Reply, Run, calls, heartbeat_line, single_call, single_reply,
    start_providers,
};

/// This folder: the scripts, `node_modules/` and `.venv/` that `setup.sh` installs.
const SUITE: Suite = Suite::new("dubbo");

/// The demo service every peer serves or calls.
pub const INTERFACE: &str = "org.apache.dubbo.samples.basic.api.DemoService";
/// The attachments every client sends unless told otherwise (as in the golden captures).
pub const TRACE: (&str, &str) = ("x-trace-id", "abc123");
/// See [`TRACE`].
pub const TENANT: (&str, &str) = ("tenant", "t1");
/// How long a client waits for one reply before it reports a time-out.
pub const CLIENT_TIMEOUT_MS: u64 = 5000;

/// `Ok(true)` when the tools are installed; `Ok(false)` (the test is skipped) when they are not
/// and `METAPROTOCOL_REQUIRE_INTEROP` is not `1`; an error when they are required but missing.
pub fn tools_ready() -> TestResult<bool> {
    let dir = SUITE.dir();
    let required = [
        dir.join("node_modules/dubbo2.js/package.json"),
        dir.join("node_modules/sofa-rpc-node/package.json"),
        dir.join("node_modules/dubbo-remoting/package.json"),
        SUITE.venv_python(),
    ];
    let missing: Vec<_> = required.iter().filter(|p| !p.exists()).collect();
    SUITE.ready((!missing.is_empty()).then(|| format!("{missing:?} are missing")))
}
