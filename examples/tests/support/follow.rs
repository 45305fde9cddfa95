//! Calls made under load and the updates they must follow: when each call started and ended and
//! which server answered it (from the engine's own clients, or from the Python Thrift client's
//! `load` scenario), checked against when each update was asked for and applied.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch, the clock the Python client stamps its calls with too, counted
/// on the monotonic clock from the first reading so that this process's stamps never jump.
pub fn now_ns() -> u128 {
    static BASE: std::sync::OnceLock<(std::time::Instant, u128)> = std::sync::OnceLock::new();
    let (instant, epoch) = BASE.get_or_init(|| {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        (std::time::Instant::now(), epoch)
    });
    epoch + instant.elapsed().as_nanos()
}

/// One call: when it started and ended, and which server answered.
pub type Call = (u128, u128, String);

/// An update of a route config or endpoints: when it was asked for (an admin request sent, the
/// file written, a control plane's push), when it was applied (the admin API answered, the
/// proxy runs it), and the version it switched to (the prefix of the names of the servers that
/// serve it).
pub type Switch = (u128, u128, &'static str);

/// Checks that every call started at least `within` after an update was applied went
/// to the version switched to, or to a later one (a call may be routed after the next update
/// when it is slow to arrive). Returns the violations and the longest time after an update was
/// applied that a call still went to the old version.
pub fn check(calls: &[Call], switches: &[Switch], within: Duration) -> (Vec<String>, Duration) {
    let within = within.as_nanos();
    let mut violations = Vec::new();
    let mut lag = 0u128;
    for (start, end, server) in calls {
        // The last update asked for before the call started, and those asked for before it
        // ended: the call may follow any of them.
        let first = switches
            .partition_point(|(asked, _, _)| asked <= start)
            .saturating_sub(1);
        let last = switches.partition_point(|(asked, _, _)| asked <= end);
        let Some(&(_, applied, version)) = switches.get(first) else {
            continue;
        };
        let followed = switches
            .get(first..last)
            .unwrap_or_default()
            .iter()
            .any(|(_, _, v)| server.starts_with(v));
        if followed {
            continue;
        }
        let since = start.saturating_sub(applied);
        lag = lag.max(since);
        if since >= within {
            violations.push(format!(
                "a call {} ms after the switch to {version} went to {server}",
                since / 1_000_000
            ));
        }
    }
    (violations, Duration::from_nanos(lag as u64))
}
