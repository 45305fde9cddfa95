//! Deadlines: the route's timeout, capped by the caller's own, and each attempt's.

use std::time::Duration;

use tokio::time::Instant;

use crate::route::DEFAULT_ROUTE_TIMEOUT;

/// How far "no timeout" is: far enough to never fire, near enough not to overflow.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + after`, saturating: a timeout of centuries means "never", not a panic.
pub(crate) fn after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or_else(|| now + NEVER)
}

/// What is left at `now` of the timeout a request's caller asked for (`requested`), counted from
/// its arrival at `received`: a filter's wait (a fault's delay, a rate limit's check) used part
/// of it, and the caller gives up when it runs out, however long the proxy held its request.
pub(crate) fn requested_left(
    requested: Option<Duration>,
    received: std::time::Instant,
    now: Instant,
) -> Option<Duration> {
    requested
        .map(|timeout| timeout.saturating_sub(now.into_std().saturating_duration_since(received)))
}

/// The deadline of a request's filters' wait that began at `now`: the wait may take at most
/// [`DEFAULT_ROUTE_TIMEOUT`], and no longer than the caller's own timeout (`requested`, counted
/// from the request's arrival at `received`).
pub(crate) fn filter_wait_deadline(
    requested: Option<Duration>,
    received: std::time::Instant,
    now: Instant,
) -> Instant {
    let most = requested_left(requested, received, now).map_or(DEFAULT_ROUTE_TIMEOUT, |left| {
        left.min(DEFAULT_ROUTE_TIMEOUT)
    });
    after(now, most)
}

/// The deadline of a request routed at `now`: the route's timeout (`None`: no timeout), capped
/// by the request's own deadline when its protocol carries one.
pub(crate) fn request_deadline(
    now: Instant,
    route_timeout: Option<Duration>,
    requested: Option<Duration>,
) -> Instant {
    let timeout = match (route_timeout, requested) {
        (Some(route), Some(requested)) => route.min(requested),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => NEVER,
    };
    after(now, timeout)
}

/// The deadline of a mirrored copy of a request routed at `now`: the request's own, but at most
/// [`DEFAULT_ROUTE_TIMEOUT`] for a request without one (a route with `timeout: 0s`, a caller
/// that asked for none). A copy has no client waiting for it: one that a mirror never answers
/// would hold its place in the mirror's `max_in_flight` (and its endpoint's in-flight count)
/// for as long as the mirror's connection lives, and with `max_in_flight` of them, mirroring
/// would stop for good.
pub(crate) fn copy_deadline(
    now: Instant,
    route_timeout: Option<Duration>,
    requested: Option<Duration>,
) -> Instant {
    match (route_timeout, requested) {
        (None, None) => after(now, DEFAULT_ROUTE_TIMEOUT),
        _ => request_deadline(now, route_timeout, requested),
    }
}

/// True if a request's deadline ([`request_deadline`]) is the route's own timeout: the request
/// asked for none shorter. A route without a timeout has no deadline of its own.
pub(crate) fn route_sets_deadline(
    route_timeout: Option<Duration>,
    requested: Option<Duration>,
) -> bool {
    match (route_timeout, requested) {
        (Some(route), Some(requested)) => route <= requested,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Whose deadline a request's is ([`request_deadline`]), which says what its attempts tell
/// their server of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DeadlineOwner {
    /// Nobody's: the caller asked for none. The route's timeout, if any, is the proxy's
    /// business: a caller that sent no deadline did not ask for its servers to be told one (a
    /// brpc client sends none unless told to), and its requests, most of a protocol without
    /// deadlines (Thrift) all of them, go the way they came, at no cost.
    Nobody,
    /// The caller's own timeout, as it sent it (its request reached the router within a
    /// millisecond of its arrival), and no route timeout is shorter: a first attempt under it
    /// goes to its server as the caller wrote it.
    Caller,
    /// The proxy's: the route's timeout, shorter than the caller's, or a caller's timeout
    /// partly used up before the request was routed.
    Proxy,
}

impl DeadlineOwner {
    /// Whose the deadline of a request routed under `route_timeout` is, whose caller asked for
    /// `requested` of which `requested_left` is left (see [`requested_left`]).
    pub(crate) fn of(
        route_timeout: Option<Duration>,
        requested: Option<Duration>,
        requested_left: Option<Duration>,
    ) -> Self {
        match (requested, requested_left) {
            (Some(sent), Some(left))
                if sent.saturating_sub(left) < Duration::from_millis(1)
                    && route_timeout.is_none_or(|route| route >= left) =>
            {
                Self::Caller
            }
            (Some(_), _) => Self::Proxy,
            (None, _) => Self::Nobody,
        }
    }
}

/// A deadline to send a request under, and whether its server is told what is left of it
/// ([`tells_deadline`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendDeadline {
    pub at: Instant,
    pub told: bool,
}

/// Whether attempt `number` (1 for the first) of a request whose deadline (`request_deadline`)
/// is `owner`'s tells its server what is left of its own deadline (`attempt_deadline`), as a
/// protocol's clients write what is left of a call's deadline into each attempt: unless that
/// is the caller's own deadline, as it sent it, on the first attempt (which then goes
/// verbatim), or the caller sent none.
pub(crate) fn tells_deadline(
    owner: DeadlineOwner,
    number: u32,
    attempt_deadline: Instant,
    request_deadline: Instant,
) -> bool {
    match owner {
        DeadlineOwner::Nobody => false,
        DeadlineOwner::Caller => number > 1 || attempt_deadline < request_deadline,
        DeadlineOwner::Proxy => true,
    }
}

/// The deadline of an attempt started at `now`: its per-try timeout, within the request's.
pub(crate) fn attempt_deadline(
    now: Instant,
    per_try: Option<Duration>,
    request_deadline: Instant,
) -> Instant {
    match per_try {
        Some(per_try) => request_deadline.min(after(now, per_try)),
        None => request_deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_deadline_caps_the_route_and_nothing_overflows() {
        let now = Instant::now();
        let secs = Duration::from_secs;
        assert_eq!(
            request_deadline(now, Some(secs(5)), Some(secs(1))),
            now + secs(1)
        );
        assert_eq!(request_deadline(now, Some(secs(5)), None), now + secs(5));
        assert_eq!(request_deadline(now, None, Some(secs(2))), now + secs(2));
        assert!(request_deadline(now, None, None) > now + secs(365 * 24 * 3600));
        assert!(request_deadline(now, Some(Duration::MAX), None) > now);
        let deadline = now + secs(10);
        assert_eq!(
            attempt_deadline(now, Some(secs(1)), deadline),
            now + secs(1)
        );
        assert_eq!(attempt_deadline(now, Some(secs(20)), deadline), deadline);
        assert_eq!(attempt_deadline(now, None, deadline), deadline);
        assert_eq!(copy_deadline(now, Some(secs(5)), None), now + secs(5));
        assert_eq!(copy_deadline(now, None, Some(secs(2))), now + secs(2));
        assert_eq!(copy_deadline(now, None, None), now + DEFAULT_ROUTE_TIMEOUT);
    }

    #[test]
    fn only_a_first_attempt_under_the_callers_own_deadline_keeps_it_untold() {
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        let caller = DeadlineOwner::of(Some(secs(5)), Some(secs(1)), Some(secs(1)));
        assert_eq!(caller, DeadlineOwner::Caller);
        assert_eq!(
            DeadlineOwner::of(
                None,
                Some(secs(1)),
                Some(secs(1) - Duration::from_micros(300))
            ),
            DeadlineOwner::Caller
        );
        assert_eq!(
            DeadlineOwner::of(Some(secs(1)), Some(secs(1)), Some(secs(1))),
            DeadlineOwner::Caller,
            "a route timeout as long as the caller's is not shorter"
        );
        assert_eq!(
            DeadlineOwner::of(Some(ms(300)), Some(secs(1)), Some(secs(1))),
            DeadlineOwner::Proxy
        );
        assert_eq!(
            DeadlineOwner::of(Some(secs(5)), None, None),
            DeadlineOwner::Nobody,
            "the caller asked for none"
        );
        assert_eq!(
            DeadlineOwner::of(None, Some(secs(1)), Some(ms(700))),
            DeadlineOwner::Proxy,
            "300 ms of it went in the filters"
        );
        assert_eq!(DeadlineOwner::of(None, None, None), DeadlineOwner::Nobody);
        let now = Instant::now();
        let (end, cut) = (now + secs(1), now + ms(200));
        assert!(!tells_deadline(caller, 1, end, end));
        assert!(tells_deadline(caller, 2, end, end));
        assert!(tells_deadline(caller, 1, cut, end));
        assert!(tells_deadline(DeadlineOwner::Proxy, 1, end, end));
        assert!(!tells_deadline(DeadlineOwner::Nobody, 2, end, end));
        assert!(!tells_deadline(DeadlineOwner::Nobody, 1, cut, end));
    }

    #[test]
    fn a_deadline_is_the_routes_own_unless_the_caller_asked_for_a_shorter_one() {
        let secs = Duration::from_secs;
        assert!(route_sets_deadline(Some(secs(5)), None));
        assert!(route_sets_deadline(Some(secs(5)), Some(secs(5))));
        assert!(route_sets_deadline(Some(secs(5)), Some(secs(9))));
        assert!(!route_sets_deadline(Some(secs(5)), Some(secs(1))));
        assert!(!route_sets_deadline(None, Some(secs(1))));
        assert!(!route_sets_deadline(None, None));
    }
}
