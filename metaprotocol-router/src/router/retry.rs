//! Retry policy: which attempt outcomes are tried again, how often, and how long to wait.

use std::time::Duration;

use metaprotocol_core::ResponseStatus;

use super::outcome::AttemptOutcome;
use crate::config::{RetryOn, RetryPolicySpec};

/// The first pause between attempts; it doubles per retry up to [`MAX_BACKOFF`] (Envoy's
/// defaults), with jitter, so that a failing upstream is not hammered in lockstep.
const BASE_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// A compiled retry policy.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub num_retries: u32,
    on_connect_failure: bool,
    on_reset: bool,
    on_unavailable: bool,
    on_timeout: bool,
    /// The deadline of each attempt (the route timeout still bounds the whole request).
    pub per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    pub fn new(spec: &RetryPolicySpec) -> Self {
        let on = |r: RetryOn| spec.retry_on.contains(&r);
        Self {
            num_retries: spec.num_retries,
            on_connect_failure: on(RetryOn::ConnectFailure),
            on_reset: on(RetryOn::Reset),
            on_unavailable: on(RetryOn::Unavailable),
            on_timeout: on(RetryOn::Timeout),
            per_try_timeout: spec.per_try_timeout,
        }
    }

    /// True if the policy retries an attempt that ended with `outcome`. A request that certainly
    /// never reached the upstream is retried by either `connect_failure` or `reset`: resending
    /// it cannot run it twice.
    pub fn retries(&self, outcome: &AttemptOutcome) -> bool {
        if outcome.never_sent() && (self.on_connect_failure || self.on_reset) {
            return true;
        }
        match outcome {
            AttemptOutcome::Answered(status) => {
                self.on_unavailable && *status == ResponseStatus::ServerError
            }
            AttemptOutcome::ConnectFailure => self.on_connect_failure,
            AttemptOutcome::Reset { .. } => self.on_reset,
            AttemptOutcome::Overflow => false,
            AttemptOutcome::Timeout => self.on_timeout,
            AttemptOutcome::EncodeFailure => false,
        }
    }

    /// The pause before retry number `retry` (1 for the first), with jitter.
    pub fn backoff(retry: u32) -> Duration {
        let ceiling = BASE_BACKOFF
            .saturating_mul(1 << retry.saturating_sub(1).min(8))
            .min(MAX_BACKOFF);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(ceiling_us / 2..=ceiling_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for retry in 1..20 {
            let pause = RetryPolicy::backoff(retry);
            assert!(pause <= MAX_BACKOFF, "{retry}: {pause:?}");
            assert!(pause >= BASE_BACKOFF / 2, "{retry}: {pause:?}");
        }
        assert!(RetryPolicy::backoff(1) <= BASE_BACKOFF);
    }
}
