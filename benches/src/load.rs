//! The load generator: connections that keep calls in flight, pipelined, and check every answer.
//!
//! A [`Connection`] is one socket driven by one task: it writes every call that may go now in
//! one write, reads whatever has arrived in one read, and matches each answer to its call by id
//! (`InFlight`). Closed loop, a new call goes out as soon as an answer frees a place; open loop
//! ([`Pacing::Every`]), calls go out on a fixed schedule and latency runs from each call's
//! *intended* time, so a stall that delays sending is measured rather than hidden (coordinated
//! omission). [`generate`] runs many connections for a duration and makes the [`Report`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cores::{self, CoresApart};
use crate::report::{Latency, Readings, Report, Watched};
use crate::syscalls::SyscallCounter;
use crate::wire::{Answer, Caller, Protocol, WireError};

/// The load generator's own name among the processes of its report.
pub const LOADGEN_PROCESS: &str = "loadgen";

/// Bytes the read buffer keeps free for one read.
const READ_CHUNK: usize = 64 * 1024;
/// The largest latency the histograms are sized for up front (they grow past it).
const LATENCY_RANGE: Duration = Duration::from_secs(60);

/// When calls are sent.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// A new call as soon as an answer frees a place: the depth is always in flight.
    Closed,
    /// One call every `interval` from `first`, answered or not (at most the depth in flight: a
    /// call due while the depth is in flight waits, and its latency counts the wait).
    Every {
        /// The first call's intended time.
        first: Instant,
        /// The time between two calls of this connection.
        interval: Duration,
    },
}

/// The answers that count: those received from `from` until `until`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The end of the warm-up.
    pub from: Instant,
    /// The end of the measurement.
    pub until: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        self.from <= at && at < self.until
    }
}

/// What one [`Connection::run`] does.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// When calls are sent.
    pub pacing: Pacing,
    /// Which answers count in the latency and the number of calls.
    pub window: Window,
    /// Stop once this many calls were sent and answered (`None`: only the deadline stops).
    pub calls: Option<u64>,
    /// Stop at this time, whatever is in flight.
    pub deadline: Instant,
    /// Calls sent longer ago than this and still unanswered at the end count as errors.
    pub patience: Duration,
    /// Write after this many calls rather than all that may go, as clients that flush every
    /// call do (`None`: one write for all; a socket that takes no more still gathers them).
    pub calls_per_write: Option<NonZeroU64>,
}

impl Plan {
    /// `calls` calls, closed loop, all counted; unanswered by `timeout` is an error.
    pub fn calls(calls: u64, timeout: Duration) -> Self {
        let now = Instant::now();
        let deadline = now + timeout;
        Plan {
            pacing: Pacing::Closed,
            window: Window {
                from: now,
                until: deadline,
            },
            calls: Some(calls),
            deadline,
            patience: Duration::ZERO,
            calls_per_write: None,
        }
    }
}

/// Everything that went wrong, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// Connections closed by the peer or failed on a read or write.
    pub io: u64,
    /// Frames that could not be read (a connection whose framing breaks stops).
    pub malformed: u64,
    /// Answers whose id matched no call in flight.
    pub unknown_id: u64,
    /// Calls answered with an error status, exception or error code.
    pub refused: u64,
    /// Calls answered with a payload other than the one they carried.
    pub wrong_payload: u64,
    /// Calls still unanswered at the end, sent longer ago than the patience.
    pub unanswered: u64,
}

impl Errors {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.io
            + self.malformed
            + self.unknown_id
            + self.refused
            + self.wrong_payload
            + self.unanswered
    }

    fn add(&mut self, other: &Errors) {
        self.io += other.io;
        self.malformed += other.malformed;
        self.unknown_id += other.unknown_id;
        self.refused += other.refused;
        self.wrong_payload += other.wrong_payload;
        self.unanswered += other.unanswered;
    }
}

/// What connections have measured.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency in nanoseconds of every call answered correctly within the window.
    pub latency: Histogram<u64>,
    /// The errors.
    pub errors: Errors,
    /// Open loop: calls due by the end that were never sent (the target could not keep up).
    pub behind: u64,
    /// Why the first connection that stopped early stopped.
    pub failure: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        let mut latency = Histogram::new_with_bounds(1, LATENCY_RANGE.as_nanos() as u64, 3)?;
        latency.auto(true);
        Ok(Self {
            latency,
            errors: Errors::default(),
            behind: 0,
            failure: None,
        })
    }

    /// Calls answered correctly within the window.
    pub fn calls(&self) -> u64 {
        self.latency.len()
    }

    fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency.add(&other.latency)?;
        self.errors.add(&other.errors);
        self.behind += other.behind;
        if self.failure.is_none() {
            self.failure.clone_from(&other.failure);
        }
        Ok(())
    }
}

/// The calls in flight on one connection, in slots: a call's id names its slot in the low bits
/// and a generation above them, so an answer finds its call without a map, and an answer with an
/// id no call in flight has is told apart.
#[derive(Debug)]
struct InFlight {
    /// Per slot, the id and intended time of its call.
    slots: Vec<Option<(u64, Instant)>>,
    free: Vec<usize>,
    slot_bits: u32,
    generation: u64,
}

impl InFlight {
    /// Room for `depth` calls.
    fn new(depth: usize) -> Self {
        let slots = depth.max(1).next_power_of_two();
        Self {
            slots: vec![None; slots],
            free: (0..depth.max(1)).rev().collect(),
            slot_bits: slots.trailing_zeros(),
            generation: 0,
        }
    }

    fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// A new call's id (below 2^31), or `None` when the depth is in flight.
    fn open(&mut self, intended: Instant) -> Option<u64> {
        let slot = self.free.pop()?;
        self.generation += 1;
        let id = (self.generation << self.slot_bits | slot as u64) & 0x7fff_ffff;
        self.slots[slot] = Some((id, intended));
        Some(id)
    }

    /// The intended time of call `id`, which is no longer in flight; `None` if no call in
    /// flight has that id.
    fn close(&mut self, id: u64) -> Option<Instant> {
        let slot = (id & ((1 << self.slot_bits) - 1)) as usize;
        match self.slots.get(slot) {
            Some(&Some((open, intended))) if open == id => {
                self.slots[slot] = None;
                self.free.push(slot);
                Some(intended)
            }
            _ => None,
        }
    }

    /// Calls in flight whose intended time is before `before`.
    fn older_than(&self, before: Instant) -> u64 {
        self.slots
            .iter()
            .flatten()
            .filter(|(_, intended)| *intended < before)
            .count() as u64
    }
}

/// Why a connection stopped before its plan ended.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("connection failed: {0}")]
    Io(io::Error),
    #[error("framing lost: {0}")]
    Wire(WireError),
}

/// One connection of the load generator, reusable across runs.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    protocol: Protocol,
    caller: Caller,
    in_flight: InFlight,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Calls sent by the current run.
    sent: u64,
    /// What this connection has measured so far.
    pub tally: Tally,
}

impl Connection {
    /// Connects to `target` to make `protocol` calls with `payload_len`-byte payloads, at most
    /// `depth` in flight.
    pub async fn open(
        protocol: Protocol,
        target: SocketAddr,
        payload_len: usize,
        depth: usize,
    ) -> anyhow::Result<Self> {
        let caller = protocol.caller(payload_len)?;
        let stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            protocol,
            caller,
            in_flight: InFlight::new(depth),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
            sent: 0,
            tally: Tally::new()?,
        })
    }

    /// Runs `plan`; what happens is added to [`Connection::tally`].
    pub async fn run(&mut self, plan: &Plan) {
        self.sent = 0;
        if let Ok(Err(stop)) = tokio::time::timeout_at(plan.deadline, self.drive(plan)).await {
            match stop {
                Stop::Io(_) => self.tally.errors.io += 1,
                Stop::Wire(_) => self.tally.errors.malformed += 1,
            }
            self.tally.failure.get_or_insert_with(|| stop.to_string());
        }
        let end = Instant::now().min(plan.deadline);
        if let Some(sent_before) = end.checked_sub(plan.patience) {
            self.tally.errors.unanswered += self.in_flight.older_than(sent_before);
        }
        if let Pacing::Every { first, interval } = plan.pacing
            && end >= first
        {
            let due = end.duration_since(first).as_nanos() / interval.as_nanos().max(1) + 1;
            self.tally.behind += u64::try_from(due)
                .unwrap_or(u64::MAX)
                .saturating_sub(self.sent);
        }
    }

    async fn drive(&mut self, plan: &Plan) -> Result<(), Stop> {
        let (mut next_due, interval) = match plan.pacing {
            Pacing::Closed => (None, Duration::ZERO),
            Pacing::Every { first, interval } => (Some(first), interval),
        };
        let pacer = tokio::time::sleep_until(next_due.unwrap_or(plan.deadline));
        tokio::pin!(pacer);
        let mut answered = 0;
        loop {
            let now = Instant::now();
            while self.in_flight.has_room() && plan.calls.is_none_or(|calls| self.sent < calls) {
                let intended = match next_due.as_mut() {
                    None => now,
                    Some(due) if *due <= now => std::mem::replace(due, *due + interval),
                    Some(_) => break,
                };
                let Some(id) = self.in_flight.open(intended) else {
                    break;
                };
                self.caller
                    .write(id, &mut self.write_buf)
                    .map_err(Stop::Wire)?;
                self.sent += 1;
                if plan.calls_per_write.is_some_and(|n| self.sent % n == 0) {
                    self.flush().map_err(Stop::Io)?;
                }
            }
            if let Some(due) = next_due.filter(|due| *due != pacer.deadline()) {
                pacer.as_mut().reset(due);
            }
            self.flush().map_err(Stop::Io)?;
            if plan.calls.is_some_and(|calls| answered >= calls) {
                return Ok(());
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
                self.read_buf.reserve(READ_CHUNK);
            }
            let event = {
                let (mut reader, writer) = self.stream.split();
                tokio::select! {
                    biased;
                    read = reader.read_buf(&mut self.read_buf) => Event::Read(read),
                    ready = writer.as_ref().writable(), if !self.write_buf.is_empty() => {
                        Event::Writable(ready)
                    }
                    () = &mut pacer, if next_due.is_some() && self.in_flight.has_room() => {
                        Event::Due
                    }
                }
            };
            match event {
                Event::Read(Ok(0)) => {
                    return Err(Stop::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Event::Read(Ok(_)) => answered += self.take_answers(&plan.window)?,
                Event::Read(Err(err)) | Event::Writable(Err(err)) => return Err(Stop::Io(err)),
                Event::Writable(Ok(())) | Event::Due => {}
            }
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) -> io::Result<()> {
        while !self.write_buf.is_empty() {
            match self.stream.try_write(&self.write_buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.write_buf.advance(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Checks every whole answer in the read buffer; returns how many matched a call.
    fn take_answers(&mut self, window: &Window) -> Result<u64, Stop> {
        // One clock reading per read: the answers in it arrived together.
        let now = Instant::now();
        let mut answered = 0;
        while let Some(len) = self
            .protocol
            .frame_len(&self.read_buf)
            .map_err(Stop::Wire)?
        {
            let frame = self.read_buf.split_to(len).freeze();
            if self.check(&frame, now, window) {
                answered += 1;
            }
        }
        Ok(answered)
    }

    /// Checks one answer; true if it answered a call in flight.
    fn check(&mut self, frame: &Bytes, now: Instant, window: &Window) -> bool {
        let Ok(response) = self.protocol.read_response(frame) else {
            self.tally.errors.malformed += 1;
            return false;
        };
        let Some(intended) = self.in_flight.close(response.id) else {
            self.tally.errors.unknown_id += 1;
            return false;
        };
        match response.answer {
            Answer::Refused => self.tally.errors.refused += 1,
            Answer::Payload(payload) => {
                if !self.caller.echoes(response.id, &frame[payload]) {
                    self.tally.errors.wrong_payload += 1;
                } else if window.contains(now) {
                    let latency = now.saturating_duration_since(intended).as_nanos();
                    self.tally
                        .latency
                        .saturating_record(u64::try_from(latency).unwrap_or(u64::MAX));
                }
            }
        }
        true
    }
}

/// What woke a connection up.
enum Event {
    Read(io::Result<usize>),
    Writable(io::Result<()>),
    Due,
}

/// A load to generate: [`generate`]'s input.
#[derive(Debug, Clone)]
pub struct Load {
    /// The protocol spoken.
    pub protocol: Protocol,
    /// Where the calls go.
    pub target: SocketAddr,
    /// Connections opened.
    pub connections: usize,
    /// Calls in flight per connection at most (closed loop: always).
    pub outstanding: usize,
    /// Calls per second over all connections: open loop; `None`: closed loop.
    pub rate: Option<f64>,
    /// Payload bytes per call.
    pub payload: usize,
    /// Time before the measurement starts.
    pub warmup: Duration,
    /// The measurement's length.
    pub duration: Duration,
    /// Unanswered for longer than this at the end is an error.
    pub patience: Duration,
    /// See [`Plan::calls_per_write`].
    pub calls_per_write: Option<NonZeroU64>,
    /// Processes whose CPU and peak memory go in the report.
    pub watch: Vec<Watched>,
    /// Count the system calls of the processes in `watch` over the window (`perf`): see
    /// [`crate::syscalls`] for what that costs them.
    pub syscalls: bool,
    /// Copied into the report as they are.
    pub labels: BTreeMap<String, String>,
    /// Two cores whose round trip (see [`crate::cores`]) is measured before and after the run.
    pub cores_probe: Option<(usize, usize)>,
}

/// Runs `load` on the current runtime, one task per connection, and reports.
pub async fn generate(load: &Load) -> anyhow::Result<Report> {
    anyhow::ensure!(
        load.connections > 0 && load.outstanding > 0,
        "no connections or nothing outstanding"
    );
    let cores_before = probe_cores(load.cores_probe).await?;
    let mut connections = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        connections.push(
            Connection::open(load.protocol, load.target, load.payload, load.outstanding).await?,
        );
    }
    let start = Instant::now();
    let window = Window {
        from: start + load.warmup,
        until: start + load.warmup + load.duration,
    };
    let per_connection = match load.rate {
        Some(rate) if rate > 0.0 => Some(Duration::from_secs_f64(load.connections as f64 / rate)),
        Some(_) => anyhow::bail!("the rate must be positive"),
        None => None,
    };
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, mut connection)| {
            // Open loop, connections take turns rather than send together.
            let pacing = match per_connection {
                None => Pacing::Closed,
                Some(interval) => Pacing::Every {
                    first: start + interval.mul_f64(i as f64 / load.connections as f64),
                    interval,
                },
            };
            let plan = Plan {
                pacing,
                window,
                calls: None,
                deadline: window.until,
                patience: load.patience,
                calls_per_write: load.calls_per_write,
            };
            tokio::spawn(async move {
                connection.run(&plan).await;
                connection.tally
            })
        })
        .collect();
    let mut watched = load.watch.clone();
    watched.push(Watched {
        name: LOADGEN_PROCESS.to_owned(),
        pid: std::process::id(),
    });
    tokio::time::sleep_until(window.from).await;
    let before = Readings::take(&watched);
    let counters = if load.syscalls {
        load.watch
            .iter()
            .map(|process| SyscallCounter::start(process.pid, load.duration))
            .collect::<io::Result<Vec<_>>>()
            .context("cannot start `perf stat` to count system calls")?
    } else {
        Vec::new()
    };
    tokio::time::sleep_until(window.until).await;
    let after = Readings::take(&watched);
    let mut tally = Tally::new()?;
    for task in tasks {
        tally.add(&task.await?)?;
    }
    let calls = tally.calls();
    let rps = calls as f64 / load.duration.as_secs_f64();
    let (mut processes, others_cpu_percent) = after.since(&before, &watched, calls, load.duration);
    // `perf` ends with the window; waiting for its report blocks, off the runtime's thread.
    let counts = tokio::task::spawn_blocking(|| {
        counters
            .into_iter()
            .map(SyscallCounter::finish)
            .collect::<Vec<_>>()
    })
    .await?;
    // `watch` comes first in `processes`, in order; the load generator itself is not counted.
    for (process, count) in processes.iter_mut().zip(counts) {
        process.syscalls_per_call = count.and_then(|count| count.per_call(rps));
    }
    let cores_apart = match load.cores_probe {
        Some(_) => Some(CoresApart {
            before_ns: cores_before,
            after_ns: probe_cores(load.cores_probe).await?,
        }),
        None => None,
    };
    Ok(Report {
        labels: load.labels.clone(),
        protocol: load.protocol,
        connections: load.connections,
        outstanding: load.outstanding,
        rate: load.rate,
        payload: load.payload,
        calls_per_write: load.calls_per_write,
        seconds: load.duration.as_secs_f64(),
        calls,
        rps,
        errors: tally.errors.total(),
        error_kinds: tally.errors,
        behind: tally.behind,
        failure: tally.failure,
        latency_us: Latency::of(&tally.latency),
        processes,
        others_cpu_percent,
        cores_apart,
    })
}

/// The round trip between `cores`, if asked for and the probe finished; off the runtime's
/// thread, which it would block.
async fn probe_cores(cores: Option<(usize, usize)>) -> anyhow::Result<Option<f64>> {
    let Some((a, b)) = cores else {
        return Ok(None);
    };
    Ok(tokio::task::spawn_blocking(move || cores::probe(a, b)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_find_their_calls_and_strangers_do_not() {
        let now = Instant::now();
        let mut in_flight = InFlight::new(3);
        let ids: Vec<_> = (0..3).filter_map(|_| in_flight.open(now)).collect();
        assert_eq!(ids.len(), 3);
        assert!(!in_flight.has_room());
        assert_eq!(in_flight.close(ids[1]), Some(now));
        assert_eq!(in_flight.close(ids[1]), None, "answered twice");
        let reused = in_flight.open(now);
        assert!(
            reused.is_some_and(|id| id != ids[1]),
            "a reused slot has a new id"
        );
        assert_eq!(in_flight.close(ids[1] + 4), None);
        assert_eq!(in_flight.older_than(now + Duration::from_millis(1)), 3);
    }
}
