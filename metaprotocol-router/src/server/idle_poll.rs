//! Whether the kernel polls for work when a core idles, before it halts the core.
//!
//! Busy polling ([`super::busy_poll`]) pays because a halted core is slow to wake: on a virtual
//! machine the wake-up goes through the hypervisor. Some kernels poll in their idle loop first:
//! a virtual machine's `haltpoll` cpuidle governor polls up to `guest_halt_poll_ns` before it
//! halts, and `idle=poll` never halts. Such a kernel gives a sleeping worker the quick wake-up
//! for nothing, as idle time is nobody's CPU time, while a worker's own looks are its own. In the
//! load benchmark (one client, one call at a time, the proxy alone on its core) with the kernel
//! polling up to 200 µs, the proxy that slept spent 19-20 µs of CPU a call where the one that
//! looked spent 27-29 µs, for calls 3-4 µs quicker.

use std::fmt;
use std::time::Duration;

/// The `haltpoll` governor's longest poll, in nanoseconds.
const HALTPOLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// The cpuidle governor in use.
const GOVERNOR: &str = "/sys/devices/system/cpu/cpuidle/current_governor_ro";

/// The kernel's command line, which may say `idle=poll`.
const CMDLINE: &str = "/proc/cmdline";

/// How long the kernel polls for work when a core idles before it halts the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdlePoll {
    /// Up to this long (the `haltpoll` cpuidle governor, `guest_halt_poll_ns`).
    UpTo(Duration),
    /// Until there is work: the core never halts (`idle=poll`).
    Always,
}

impl IdlePoll {
    /// This host's, from `/proc` and `/sys`; `None` where the kernel halts an idle core without
    /// polling first (or does not say).
    pub fn of_host() -> Option<Self> {
        Self::read(|path| std::fs::read_to_string(path).ok())
    }

    /// What the kernel files, as `file` reads them, say.
    fn read(file: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let cmdline = file(CMDLINE).unwrap_or_default();
        if cmdline.split_whitespace().any(|word| word == "idle=poll") {
            return Some(Self::Always);
        }
        if file(GOVERNOR)?.trim() != "haltpoll" {
            return None;
        }
        let ns: u64 = file(HALTPOLL_NS)?.trim().parse().ok()?;
        (ns > 0).then(|| Self::UpTo(Duration::from_nanos(ns)))
    }

    /// Whether the kernel polls at least `budget` before it halts.
    pub fn covers(self, budget: Duration) -> bool {
        match self {
            Self::UpTo(longest) => longest >= budget,
            Self::Always => true,
        }
    }
}

impl fmt::Display for IdlePoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UpTo(longest) => write!(f, "up to {}us (haltpoll)", longest.as_micros()),
            Self::Always => f.write_str("always (idle=poll)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`IdlePoll::read`] makes of these file contents (a missing file: `None`).
    fn read(cmdline: Option<&str>, governor: Option<&str>, ns: Option<&str>) -> Option<IdlePoll> {
        IdlePoll::read(|path| {
            match path {
                CMDLINE => cmdline,
                GOVERNOR => governor,
                HALTPOLL_NS => ns,
                _ => None,
            }
            .map(str::to_owned)
        })
    }

    #[test]
    fn the_haltpoll_governor_polls_up_to_its_limit() {
        let poll = read(Some("quiet"), Some("haltpoll\n"), Some("200000\n"));
        assert_eq!(poll, Some(IdlePoll::UpTo(Duration::from_micros(200))));
        assert_eq!(
            poll.map(|p| p.to_string()).as_deref(),
            Some("up to 200us (haltpoll)")
        );
    }

    #[test]
    fn a_kernel_that_halts_at_once_does_not_poll() {
        assert_eq!(read(None, Some("haltpoll\n"), Some("0\n")), None);
        assert_eq!(read(None, Some("menu\n"), Some("200000\n")), None);
        assert_eq!(read(None, None, Some("200000\n")), None);
        assert_eq!(read(None, Some("haltpoll\n"), None), None);
        assert_eq!(read(None, Some("haltpoll\n"), Some("lots\n")), None);
    }

    #[test]
    fn idle_poll_on_the_command_line_always_polls() {
        let poll = read(Some("console=ttyS0 idle=poll quiet\n"), Some("menu"), None);
        assert_eq!(poll, Some(IdlePoll::Always));
        assert!(read(Some("idle=halt"), Some("menu"), None).is_none());
    }

    #[test]
    fn a_poll_covers_budgets_up_to_its_length() {
        let poll = IdlePoll::UpTo(Duration::from_micros(50));
        assert!(poll.covers(Duration::from_micros(50)));
        assert!(!poll.covers(Duration::from_micros(51)));
        assert!(IdlePoll::Always.covers(Duration::from_secs(1)));
    }
}
