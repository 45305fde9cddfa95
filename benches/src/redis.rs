//! A redis-server for the global rate limit's bench and allocation count: on a free loopback
//! port, persistence off, killed and reaped when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
#[derive(Debug)]
pub struct Redis(Child, SocketAddr);

impl Redis {
    /// Starts one; `None` when redis-server is not installed or does not listen within 10s.
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis(child, SocketAddr::from(([127, 0, 0, 1], port)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(redis.1).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.1
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
