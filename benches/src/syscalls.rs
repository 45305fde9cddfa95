//! The system calls a watched process makes during the load generator's measured window,
//! counted by `perf stat` on the `raw_syscalls:sys_enter` tracepoint (`loadgen --syscalls`).
//!
//! An L4 relay pays a read and a write for every few bytes that arrive; an L7 proxy that batches
//! frames pays them for many calls at once. CPU per call says what the difference costs; this
//! says where it comes from. The tracepoint adds its own cost to every system call of the
//! process it counts, most to the process that makes the most: runs counted this way measure
//! the counts, not the CPU (compare CPU per call only between runs that were both counted or
//! both not).

use std::io;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The tracepoint every system call passes on entry.
const EVENT: &str = "raw_syscalls:sys_enter";

/// `perf stat` counting one process's system calls for a while.
#[derive(Debug)]
pub struct SyscallCounter {
    perf: Child,
}

impl SyscallCounter {
    /// Starts counting the system calls of process `pid` for `window` (`perf stat` attached to
    /// it while `sleep` runs). Fails if `perf` cannot be started.
    pub fn start(pid: u32, window: Duration) -> io::Result<Self> {
        let perf = Command::new("perf")
            .args(["stat", "-x", ",", "-e", EVENT, "-p"])
            .arg(pid.to_string())
            .args(["--", "sleep"])
            .arg(format!("{:.3}", window.as_secs_f64()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Self { perf })
    }

    /// Waits for the count's end and returns it; `None` if `perf` could not count (no access
    /// to the tracepoint, the process gone).
    pub fn finish(self) -> Option<SyscallCount> {
        let output = self.perf.wait_with_output().ok()?;
        output
            .status
            .success()
            .then(|| parse(&String::from_utf8_lossy(&output.stderr)))
            .flatten()
    }
}

/// System calls counted, and for how long the count ran.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyscallCount {
    /// System calls entered.
    pub calls: u64,
    /// How long the counter ran (perf's "time enabled"): attaching takes a moment, so this is a
    /// little shorter than the window asked for.
    pub seconds: f64,
}

impl SyscallCount {
    /// System calls per RPC call, for a load of `rps` calls per second.
    pub fn per_call(&self, rps: f64) -> Option<f64> {
        let calls = rps * self.seconds;
        (calls > 0.0).then(|| self.calls as f64 / calls)
    }
}

/// The count in `perf stat -x ,` output: the event's line is `COUNT,UNIT,EVENT,NANOSECONDS
/// ENABLED,PERCENT RUNNING,...`; a count perf could not take reads `<not counted>` or
/// `<not supported>`.
fn parse(output: &str) -> Option<SyscallCount> {
    let line = output
        .lines()
        .find(|line| line.split(',').nth(2) == Some(EVENT))?;
    let mut fields = line.split(',');
    let calls = fields.next()?.parse().ok()?;
    let enabled_ns: u64 = fields.nth(2)?.parse().ok()?;
    Some(SyscallCount {
        calls,
        seconds: enabled_ns as f64 / 1e9,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_count_and_how_long_it_ran() {
        let output = "# started on Fri Dec  4 08:26:21 2026\n\n\
                      155763,,raw_syscalls:sys_enter,1357759366,100.00,,\n";
        let count = parse(output);
        assert_eq!(
            count,
            Some(SyscallCount {
                calls: 155_763,
                seconds: 1.357_759_366
            })
        );
        let per_call = count.and_then(|count| count.per_call(100_000.0));
        assert!(
            per_call.is_some_and(|n| (n - 1.147).abs() < 0.001),
            "{per_call:?}"
        );
    }

    #[test]
    fn a_count_perf_could_not_take_is_none() {
        assert_eq!(
            parse("<not counted>,,raw_syscalls:sys_enter,0,0.00,,\n"),
            None
        );
        assert_eq!(
            parse("<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n"),
            None
        );
        assert_eq!(parse("Error:\nNo permissions\n"), None);
        assert_eq!(
            SyscallCount {
                calls: 5,
                seconds: 0.0
            }
            .per_call(1000.0),
            None
        );
    }
}
