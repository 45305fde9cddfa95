//! What the end-to-end tests of this package share: child processes that cannot outlive their
//! test ([`process`]), the proxy under test in or out of process ([`proxy`]), its admin API
//! ([`admin`]) and metrics ([`metrics`]), an OTLP receiver for its spans ([`otlp`]), the
//! skip-or-fail rule of the interop suites that need external tools ([`interop`]), the Thrift
//! suite's Python servers ([`thrift`]), a real redis-server ([`redis`]) and a mesh's TLS
//! certificates ([`mesh`]), calls under load checked against the updates they must follow
//! ([`follow`]), and an upstream whose answer is over the proxy's frame limit ([`big_answer`]).
//!
//! Each test file is a crate of its own and includes this module with `mod support;`; a test
//! that uses only part of it allows `dead_code` at that include.

pub mod admin;
pub mod big_answer;
pub mod follow;
pub mod interop;
pub mod mesh;
pub mod metrics;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod thrift;

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metaprotocol_dubbo::build::{Call, request};
use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DEMO_VERSION};

/// Any error of a test or helper; `Send` so that helpers can run on other threads and tasks.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What tests and helpers return.
pub type TestResult<T = ()> = Result<T, BoxError>;

/// A multi-threaded runtime of two workers, for a synchronous test that runs the engine (or a
/// server) in process while its own thread drives blocking clients.
pub fn runtime() -> TestResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A port on 127.0.0.1 that was free a moment ago (bound, then released). It is picked at random
/// below the kernel's range for the local ports of outgoing connections: a port from that range
/// could become the local port of another test's client before its user binds it.
pub fn free_port() -> TestResult<u16> {
    let first_outgoing = first_outgoing_port();
    if first_outgoing > 2048 {
        let low = first_outgoing / 2;
        for _ in 0..100 {
            let port = low + random_below(first_outgoing - low);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The first local port the kernel gives outgoing connections (Linux's default where unknown).
fn first_outgoing_port() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A random number below `bound` (not zero), from the standard library's randomly keyed hasher.
fn random_below(bound: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::hash::RandomState::new().build_hasher().finish();
    u16::try_from(random % u64::from(bound)).unwrap_or(0)
}

/// An address on 127.0.0.1 nothing listened on a moment ago, for a listener (or a child
/// process) to bind. Not for an upstream that must refuse connections: the port may come alive
/// meanwhile; [`refusing_addr`] holds one that stays refusing.
pub fn free_addr() -> TestResult<SocketAddr> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)))
}

/// An address on 127.0.0.1 that refuses connections for as long as the returned socket lives:
/// the socket holds the port bound without listening, so that no other test's listener can take
/// it meanwhile (an upstream that is down for the whole test; an address merely free a moment
/// ago may come alive).
pub fn refusing_addr() -> TestResult<(tokio::net::TcpSocket, SocketAddr)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let address = socket.local_addr()?;
    Ok((socket, address))
}

/// A listener on 127.0.0.1, and a socket bound to its port (not listening) that holds the port
/// for as long as it lives: once the listener is dropped, connects to the port are refused,
/// where a port merely freed could come alive (another test's listener may take it, and a
/// connect to it may be given it as its own local port: a TCP self-connect, which succeeds);
/// [`listen_again`] listens on it anew.
pub fn listener_holding_its_port() -> TestResult<(tokio::net::TcpListener, tokio::net::TcpSocket)> {
    let socket = port_sharing_socket()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let address = socket.local_addr()?;
    let listener = socket.listen(1024)?;
    let holder = port_sharing_socket()?;
    holder.bind(address)?;
    Ok((listener, holder))
}

/// Listens again at `address`, the port of a [`listener_holding_its_port`] whose listener was
/// dropped (its holder still bound).
pub fn listen_again(address: SocketAddr) -> TestResult<tokio::net::TcpListener> {
    let socket = port_sharing_socket()?;
    socket.bind(address)?;
    Ok(socket.listen(1024)?)
}

/// A socket that can share its port with the others made so (`SO_REUSEPORT`, same user), and
/// bind it while connections closed on it linger (`SO_REUSEADDR`); no other socket can.
fn port_sharing_socket() -> TestResult<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// A two-way Dubbo call of the demo service's `method` (with the argument `world`), request id
/// `id`, carrying `attachments`.
pub fn dubbo_request(id: u64, method: &str, attachments: &[(&str, &str)]) -> Bytes {
    request(
        id,
        true,
        &Call {
            service: DEMO_SERVICE,
            version: DEMO_VERSION,
            method,
            string_args: &["world"],
            attachments,
        },
    )
}

/// Waits (up to 20 s: a loaded machine may write late) until the file at `path` holds `count`
/// lines, and returns them.
pub async fn file_lines(path: &Path, count: usize) -> TestResult<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= count {
            return Ok(lines);
        }
        if Instant::now() > deadline {
            return Err(format!("{count} lines expected in {}: {text:?}", path.display()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
