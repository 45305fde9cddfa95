//! The load generator's report, printed as one JSON line per run, and the readings of other
//! processes in it: CPU time (user + system, every thread) from `/proc/PID/stat` at both ends of
//! the measured window, and peak resident memory (`VmHWM`) from `/proc/PID/status` at its end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

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
    /// The watched processes.
    pub processes: Vec<ProcessUse>,
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
        let total = ticks()? + ticks()?;
        Some(Duration::from_micros(
            total * 1_000_000 / CLOCK_TICKS_PER_SECOND,
        ))
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
}

impl ProcessUse {
    /// The use between two [`Watched::sample`]s taken `window` apart, during which `calls` calls
    /// were answered.
    pub fn between(
        watched: &Watched,
        before: Option<Duration>,
        after: Option<Duration>,
        calls: u64,
        window: Duration,
    ) -> Self {
        let used = before
            .zip(after)
            .map(|(before, after)| after.saturating_sub(before));
        Self {
            name: watched.name.clone(),
            pid: watched.pid,
            cpu_us_per_call: used
                .filter(|_| calls > 0)
                .map(|used| used.as_secs_f64() * 1e6 / calls as f64),
            cpu_percent: used.map(|used| 100.0 * used.as_secs_f64() / window.as_secs_f64()),
            peak_rss_kib: watched.peak_rss_kib(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = Watched::parse(&format!("me={}", std::process::id()));
        let me = me.unwrap_or_else(|err| panic!("{err}"));
        assert!(me.sample().is_some());
        assert!(me.peak_rss_kib().is_some_and(|kib| kib > 0));
        assert!(Watched::parse("nopid").is_err());
    }
}
