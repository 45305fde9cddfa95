//! The floor relay (`--bin relay`): the least a third process can do to carry calls between a
//! client and a server. It parses nothing and keeps no state: each client connection gets its
//! own upstream connection, and every byte read on one is written to the other at once.
//!
//! It is a reference, not a proxy. What it costs per call is what the kernel and the machine
//! charge any process in the middle (reads, writes, wake-ups, and on a virtual machine the way
//! back of an idle core), so a proxy's CPU per call can be read against it: the distance from the
//! floor is the proxy's own work, and a target below the floor cannot be met by any proxy on
//! that machine. It waits one of two ways ([`Waiting`]), the two a proxy can choose between.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

/// Bytes one read may bring.
const CHUNK: usize = 64 * 1024;

/// How the relay waits for bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Waiting {
    /// Blocks in `read`: two threads per client, one per direction, asleep until bytes come
    /// (no `poll` or `epoll`: the cheapest way to sleep).
    Sleep,
    /// Never sleeps while it has clients: one thread tries every connection in turn with
    /// non-blocking reads (busy polling at its simplest).
    Spin,
}

/// Accepts clients on `listener` and relays each to a connection of its own to `upstream`,
/// until the process ends. Returns only when it cannot go on: why.
pub fn serve(listener: TcpListener, upstream: SocketAddr, waiting: Waiting) -> io::Error {
    let spinner = match waiting {
        Waiting::Sleep => None,
        Waiting::Spin => {
            let (pairs, incoming) = mpsc::channel();
            thread::spawn(move || spin(&incoming));
            Some(pairs)
        }
    };
    loop {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) => return err,
        };
        let pair = match connect(client, upstream) {
            Ok(pair) => pair,
            Err(err) => {
                eprintln!("relay: dropping a client: {err}");
                continue;
            }
        };
        match &spinner {
            None => {
                if let Err(err) = sleep_relay(pair) {
                    eprintln!("relay: dropping a client: {err}");
                }
            }
            Some(pairs) => {
                if pairs.send(pair).is_err() {
                    return io::Error::other("the spinning thread ended");
                }
            }
        }
    }
}

/// A client connection and its own upstream connection.
type Pair = [TcpStream; 2];

fn connect(client: TcpStream, upstream: SocketAddr) -> io::Result<Pair> {
    let upstream = TcpStream::connect(upstream)?;
    for stream in [&client, &upstream] {
        stream.set_nodelay(true)?;
    }
    Ok([client, upstream])
}

/// Starts the two blocking threads of one pair.
fn sleep_relay([client, upstream]: Pair) -> io::Result<()> {
    let flows = [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ];
    for (from, to) in flows {
        thread::spawn(move || copy_blocking(from, to));
    }
    Ok(())
}

/// Copies `from` to `to` until either side ends, then closes both (which ends the other
/// direction's thread too).
fn copy_blocking(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// One direction of a spun pair: bytes read from `from` not yet written to the other side.
struct Flow {
    from: usize,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Flow {
    fn new(from: usize) -> Self {
        Self {
            from,
            buf: vec![0; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Writes what is pending, then reads and writes what came, without blocking. `Ok(false)`
    /// once the pair should close.
    fn pump(&mut self, pair: &Pair) -> io::Result<bool> {
        let (mut from, mut to) = (&pair[self.from], &pair[1 - self.from]);
        if self.start == self.end {
            match from.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => (self.start, self.end) = (0, n),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) => return Err(err),
            }
        }
        while self.start < self.end {
            match to.write(&self.buf[self.start..self.end]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.start += n,
                // The other side reads slowly: the rest goes on a later turn, and this
                // direction reads nothing more meanwhile.
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) => return Err(err),
            }
        }
        Ok(true)
    }
}

/// The spinning thread: tries every flow of every pair in turn, and sleeps only while it has
/// no pair at all.
fn spin(incoming: &mpsc::Receiver<Pair>) {
    let mut pairs: Vec<(Pair, [Flow; 2])> = Vec::new();
    loop {
        let next = if pairs.is_empty() {
            incoming.recv().ok()
        } else {
            incoming.try_recv().ok()
        };
        if let Some(pair) = next {
            if pair
                .iter()
                .all(|stream| stream.set_nonblocking(true).is_ok())
            {
                pairs.push((pair, [Flow::new(0), Flow::new(1)]));
            }
        } else if pairs.is_empty() {
            // Every sender is gone: nothing more will come.
            return;
        }
        pairs.retain_mut(|(pair, flows)| {
            flows
                .iter_mut()
                .all(|flow| flow.pump(pair).unwrap_or(false))
        });
    }
}
