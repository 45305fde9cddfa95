//! The load generator's report, printed as one JSON line per run, and the readings of processes
//! in it: CPU time (user + system, every thread) from `/proc/PID/stat` at both ends of the
//! measured window, and peak resident memory (`VmHWM`) from `/proc/PID/status` at its end. The
//! whole machine's busy time (`/proc/stat`) is read too: what neither the load generator nor the
//! watched processes used was someone else's, and says how noisy the run was.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cores::CoresApart;
use crate::load::Errors;
use crate::wire::Protocol;

/// The kernel's unit for CPU times in `/proc/PID/stat` (`getconf CLK_TCK`): 100 per second on
/// every Linux architecture these tools run on.
const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// One run of the load generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The caller's `--label key=value` pairs (the comparison script's layout, target, round).
    pub labels: BTreeMap<String, String>,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// Connections.
    pub connections: usize,
    /// Calls in flight per connection (at most, open loop).
    pub outstanding: usize,
    /// Calls per second asked for (open loop), or none (closed loop).
    pub rate: Option<f64>,
    /// Payload bytes per call.
    pub payload: usize,
    /// Calls per write at most, or none (every call that may go in one write).
    pub calls_per_write: Option<NonZeroU64>,
    /// The measured window's length.
    pub seconds: f64,
    /// Calls answered correctly within the window.
    pub calls: u64,
    /// `calls` per second.
    pub rps: f64,
    /// All errors, over the whole run (warm-up included).
    pub errors: u64,
    /// The errors by kind.
    pub error_kinds: Errors,
    /// Open loop: calls due that were never sent.
    pub behind: u64,
    /// Why the first connection that stopped early stopped.
    pub failure: Option<String>,
    /// Latency of the calls answered correctly within the window.
    pub latency_us: Latency,
    /// The watched processes, and the load generator itself (`loadgen`).
    pub processes: Vec<ProcessUse>,
    /// CPU used during the window by everything else on the machine, in percent of one core:
    /// other work sharing the cores, which makes the run noisy.
    pub others_cpu_percent: Option<f64>,
    /// The round trip between the two cores asked for (`--cores-probe`), before and after the
    /// run: where the host had put them.
    pub cores_apart: Option<CoresApart>,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest.
    pub max: f64,
    /// The mean.
    pub mean: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds.
    pub fn of(nanos: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(nanos.value_at_quantile(0.5)),
            p90: us(nanos.value_at_quantile(0.9)),
            p99: us(nanos.value_at_quantile(0.99)),
            p999: us(nanos.value_at_quantile(0.999)),
            max: us(nanos.max()),
            mean: nanos.mean() / 1000.0,
        }
    }
}

/// A process whose use of CPU and memory is reported, named for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Its name in the report (`proxy`, `echo`).
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

impl Watched {
    /// Parses `NAME=PID`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, pid) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not NAME=PID"))?;
        let pid = pid
            .parse()
            .map_err(|_| format!("`{pid}` is not a process id"))?;
        Ok(Self {
            name: name.to_owned(),
            pid,
        })
    }

    /// The CPU time the process has used so far; `None` if it cannot be read (gone).
    pub fn sample(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count after its end.
        let after_name = stat.get(stat.rfind(')')? + 1..)?;
        // Fields from 3 on; utime and stime are fields 14 and 15.
        let mut fields = after_name.split_whitespace().skip(11);
        let mut ticks = || fields.next()?.parse::<u64>().ok();
        Some(from_ticks(ticks()? + ticks()?))
    }

    /// The process's peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?;
        line.trim().trim_end_matches("kB").trim().parse().ok()
    }
}

/// CPU time readings of the machine and of watched processes, at one instant.
#[derive(Debug, Clone)]
pub struct Readings {
    machine: Option<Duration>,
    processes: Vec<Option<Duration>>,
}

impl Readings {
    /// Reads the machine and every process of `watched`.
    pub fn take(watched: &[Watched]) -> Self {
        Self {
            machine: machine_busy(),
            processes: watched.iter().map(Watched::sample).collect(),
        }
    }

    /// What each of `watched` (the processes these readings were taken of) used since
    /// `before`, `window` ago, during which `calls` calls were answered; and what everything
    /// else on the machine used, in percent of one core.
    pub fn since(
        &self,
        before: &Readings,
        watched: &[Watched],
        calls: u64,
        window: Duration,
    ) -> (Vec<ProcessUse>, Option<f64>) {
        let used: Vec<Option<Duration>> = before
            .processes
            .iter()
            .zip(&self.processes)
            .map(|(before, after)| Some(after.as_ref()?.saturating_sub(*before.as_ref()?)))
            .collect();
        let processes = watched
            .iter()
            .zip(&used)
            .map(|(watched, used)| ProcessUse::of(watched, *used, calls, window))
            .collect();
        let others = self
            .machine
            .zip(before.machine)
            .and_then(|(after, before)| {
                let ours = used.iter().copied().sum::<Option<Duration>>()?;
                Some(percent_of(
                    after.saturating_sub(before).saturating_sub(ours),
                    window,
                ))
            });
        (processes, others)
    }
}

/// CPU time of every core outside idle and I/O wait so far (`/proc/stat`), stolen time
/// excluded: that is the hypervisor's, not this machine's.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = all
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = ticks.first()? + ticks.get(1)? + ticks.get(2)? + ticks.get(5)? + ticks.get(6)?;
    Some(from_ticks(busy))
}

fn from_ticks(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / CLOCK_TICKS_PER_SECOND)
}

fn percent_of(used: Duration, window: Duration) -> f64 {
    100.0 * used.as_secs_f64() / window.as_secs_f64()
}

/// What a watched process used during the measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessUse {
    /// Its name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// CPU microseconds per call answered in the window.
    pub cpu_us_per_call: Option<f64>,
    /// CPU time over the window's length, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Peak resident memory at the window's end, in KiB.
    pub peak_rss_kib: Option<u64>,
    /// System calls per call answered in the window, when counted (`--syscalls`).
    #[serde(default)]
    pub syscalls_per_call: Option<f64>,
}

impl ProcessUse {
    fn of(watched: &Watched, used: Option<Duration>, calls: u64, window: Duration) -> Self {
        Self {
            name: watched.name.clone(),
            pid: watched.pid,
            cpu_us_per_call: used
                .filter(|_| calls > 0)
                .map(|used| used.as_secs_f64() * 1e6 / calls as f64),
            cpu_percent: used.map(|used| percent_of(used, window)),
            peak_rss_kib: watched.peak_rss_kib(),
            syscalls_per_call: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        let me = Watched::parse(&format!("me={}", std::process::id()));
        let me = me.unwrap_or_else(|err| panic!("{err}"));
        assert!(me.peak_rss_kib().is_some_and(|kib| kib > 0));
        assert!(Watched::parse("nopid").is_err());
        let watched = [me];
        let before = Readings::take(&watched);
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        let (processes, others) =
            Readings::take(&watched).since(&before, &watched, 10, Duration::from_millis(30));
        assert_eq!(processes[0].name, "me");
        assert!(processes[0].cpu_us_per_call.is_some());
        assert!(others.is_some());
    }
}
