//! `fault`: delays and aborts injected into a share of matching requests, to test how clients
//! and services cope.
//!
//! A delayed request waits ([`FilterDecision::Wait`]) without holding up any other request of
//! its connection; an aborted one is answered with the protocol's error reply of the chosen
//! kind. A request may be both delayed and aborted (it is aborted after its delay). Both are
//! counted, and flagged in the request's record (`DI`, `FI`). With `max_active_faults`, a
//! request drawn for a fault while that many are in effect (held in their delay) goes on
//! unfaulted, counted as an overflow: a delay at 100% under load then holds a bounded number
//! of requests, not every one.
//!
//! ```yaml
//! - name: fault
//!   config:
//!     match: { metadata: [ { key: method, exact: sayHello } ] }
//!     delay: { fixed_delay: 100ms, percentage: 10 }
//!     abort: { kind: unavailable, percentage: 5 }
//! ```

use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::{
    FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext, ResponseFlags, Resume,
};
use serde::Deserialize;

use super::in_flight::InFlightLimit;
use super::{FilterContext, routing_view, rule};
use crate::config::{ConfigError, MatchSpec, from_value};
use crate::route::{DEFAULT_ROUTE_TIMEOUT, RequestMatcher};
use crate::stats::Counter;

/// The filter's registered name.
pub(crate) const NAME: &str = "fault";

/// The message of an injected abort.
const ABORT_MESSAGE: &str = "metaprotocol-proxy: fault injected (fault filter)";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    /// Only matching requests are faulted; every request when absent.
    #[serde(default, rename = "match")]
    match_: MatchSpec,
    #[serde(default)]
    delay: Option<DelaySpec>,
    #[serde(default)]
    abort: Option<AbortSpec>,
    /// The most faults in effect at once; no limit when absent.
    #[serde(default)]
    max_active_faults: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySpec {
    #[serde(with = "humantime_serde")]
    fixed_delay: Duration,
    #[serde(default = "hundred")]
    percentage: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortSpec {
    #[serde(default = "fault_abort")]
    kind: String,
    #[serde(default = "hundred")]
    percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

fn fault_abort() -> String {
    LocalReplyKind::FaultAbort.name().to_owned()
}

/// A share of requests, as a probability.
#[derive(Debug, Clone, Copy)]
struct Share(f64);

impl Share {
    fn new(percentage: f64) -> Result<Self, ConfigError> {
        crate::config::check_percentage(percentage)?;
        Ok(Self(percentage / 100.0))
    }

    /// True for this share of draws.
    fn draw(self) -> bool {
        self.0 > 0.0 && fastrand::f64() < self.0
    }
}

/// Builds the filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    let spec: FaultSpec = from_value(config)?;
    let matcher = rule(&spec.match_).map_err(|e| e.within("match"))?;
    let delay = spec
        .delay
        .map(|delay| {
            if delay.fixed_delay.is_zero() {
                return Err(ConfigError::new("fixed_delay", "must be greater than 0"));
            }
            // Longer, every delayed request would end in the filters' timeout instead.
            if delay.fixed_delay >= DEFAULT_ROUTE_TIMEOUT {
                return Err(ConfigError::new(
                    "fixed_delay",
                    format!(
                        "must be less than {DEFAULT_ROUTE_TIMEOUT:?}, the time a request's filters may take"
                    ),
                ));
            }
            Ok((delay.fixed_delay, Share::new(delay.percentage)?))
        })
        .transpose()
        .map_err(|e: ConfigError| e.within("delay"))?;
    let abort = spec
        .abort
        .map(|abort| {
            let kind = abort
                .kind
                .parse::<LocalReplyKind>()
                .map_err(|err| ConfigError::new("kind", err.to_string()))?;
            Ok((kind, Share::new(abort.percentage)?))
        })
        .transpose()
        .map_err(|e: ConfigError| e.within("abort"))?;
    if delay.is_none() && abort.is_none() {
        return Err(ConfigError::new("", "needs `delay`, `abort` or both"));
    }
    if spec.max_active_faults == Some(0) {
        return Err(ConfigError::new(
            "max_active_faults",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    let metrics = context.metrics();
    Ok(Arc::new(Fault {
        matcher,
        delay,
        abort,
        active: spec.max_active_faults.map(InFlightLimit::new),
        overflow: metrics.counter(
            "fault_overflow",
            "Requests drawn for a fault that went on unfaulted, max_active_faults being in effect",
        ),
        delays_injected: metrics.counter(
            "fault_delays_injected",
            "Requests delayed by fault injection",
        ),
        aborts_injected: metrics.counter(
            "fault_aborts_injected",
            "Requests aborted by fault injection",
        ),
    }))
}

/// The running filter.
struct Fault {
    matcher: RequestMatcher,
    delay: Option<(Duration, Share)>,
    abort: Option<(LocalReplyKind, Share)>,
    /// The faults in effect (a delay while it holds its request, an abort for the instant it
    /// is decided), with `max_active_faults`.
    active: Option<Arc<InFlightLimit>>,
    overflow: Counter,
    delays_injected: Counter,
    aborts_injected: Counter,
}

impl L7Filter for Fault {
    fn name(&self) -> &str {
        NAME
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        if !self
            .matcher
            .matches(&routing_view(ctx), &ctx.record.connection)
        {
            return FilterDecision::Continue;
        }
        let abort = self
            .abort
            .filter(|(_, share)| share.draw())
            .map(|(kind, _)| kind);
        let delay = self
            .delay
            .filter(|(_, share)| share.draw())
            .map(|(delay, _)| delay);
        if abort.is_none() && delay.is_none() {
            return FilterDecision::Continue;
        }
        let hold = match self.active.as_ref().map(InFlightLimit::try_enter) {
            Some(None) => {
                self.overflow.inc();
                return FilterDecision::Continue;
            }
            hold => hold.flatten(),
        };
        let flags = &mut ctx.record.outcome.flags;
        let decision = match abort {
            Some(kind) => {
                self.aborts_injected.inc();
                flags.insert(ResponseFlags::FAULT_INJECTED);
                FilterDecision::Reply(LocalReply::new(kind, ABORT_MESSAGE))
            }
            None => FilterDecision::Continue,
        };
        match delay {
            None => decision,
            Some(delay) => {
                self.delays_injected.inc();
                flags.insert(ResponseFlags::DELAY_INJECTED);
                FilterDecision::Wait(Box::pin(async move {
                    let _in_effect = hold;
                    tokio::time::sleep(delay).await;
                    Resume::new(decision)
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::FilterChain;
    use serde_json::json;

    use super::*;
    use crate::filters::testing::{TestRequest, assert_rejected, build as build_filter, value};
    use crate::stats::Metrics;

    #[test]
    fn every_matching_request_is_aborted_with_the_kind_at_100_percent() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filter = build_filter(
            NAME,
            json!({ "match": { "metadata": [ { "key": "method", "exact": "sayHello" } ] },
                    "abort": { "kind": "unavailable" } }),
            &metrics,
        )?;
        let (decision, record) = TestRequest::new(&[("method", "sayHello")]).run(&*filter);
        match decision {
            FilterDecision::Reply(reply) => assert_eq!(reply.kind, LocalReplyKind::Unavailable),
            other => panic!("{other:?}"),
        }
        assert!(record.outcome.flags.contains(ResponseFlags::FAULT_INJECTED));
        let other = TestRequest::new(&[("method", "sayBye")]);
        assert!(matches!(other.decide(&*filter), FilterDecision::Continue));
        assert_eq!(
            value(
                &metrics,
                "metaprotocol_fault_aborts_injected_total{listener=\"in\",filter=\"fault\"}"
            ),
            Some(1.0)
        );
        Ok(())
    }

    #[test]
    fn zero_percent_injects_nothing() -> Result<(), ConfigError> {
        let filter = build_filter(
            NAME,
            json!({ "delay": { "fixed_delay": "1s", "percentage": 0 },
                    "abort": { "percentage": 0 } }),
            &Metrics::new(),
        )?;
        for _ in 0..100 {
            assert!(matches!(
                TestRequest::new(&[]).decide(&*filter),
                FilterDecision::Continue
            ));
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_waits_then_the_abort_answers() -> Result<(), Box<dyn std::error::Error>> {
        let filter = build_filter(
            NAME,
            json!({ "delay": { "fixed_delay": "250ms" }, "abort": {} }),
            &Metrics::new(),
        )?;
        let (decision, record) = TestRequest::new(&[]).run(&*filter);
        assert!(record.outcome.flags.contains(ResponseFlags::DELAY_INJECTED));
        let FilterDecision::Wait(future) = decision else {
            return Err(format!("not a wait: {decision:?}").into());
        };
        let started = tokio::time::Instant::now();
        let resume = future.await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        match resume.decision {
            FilterDecision::Reply(reply) => assert_eq!(reply.kind, LocalReplyKind::FaultAbort),
            other => return Err(format!("{other:?}").into()),
        }
        // Through a chain, a delay alone lets the request on once it is over.
        let chain = FilterChain::new(vec![build_filter(
            NAME,
            json!({ "delay": { "fixed_delay": "10ms" } }),
            &Metrics::new(),
        )?]);
        let probe = TestRequest::new(&[]);
        assert!(probe.run_chain(&chain).await.is_ok());
        Ok(())
    }

    /// A delay at 100% under load held every call it delayed, without a bound of its own:
    /// past `max_active_faults` faults in effect, a call goes on unfaulted, counted.
    #[tokio::test(start_paused = true)]
    async fn past_max_active_faults_calls_go_on_unfaulted() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filter = build_filter(
            NAME,
            json!({ "max_active_faults": 2, "delay": { "fixed_delay": "10s" }, "abort": {} }),
            &metrics,
        )?;
        let request = TestRequest::new(&[]);
        let first = request.decide(&*filter);
        let second = request.decide(&*filter);
        assert!(matches!(first, FilterDecision::Wait(_)), "{first:?}");
        assert!(matches!(second, FilterDecision::Wait(_)), "{second:?}");
        let (third, record) = request.run(&*filter);
        assert!(matches!(third, FilterDecision::Continue), "{third:?}");
        assert!(
            record.outcome.flags.is_empty(),
            "{:?}",
            record.outcome.flags
        );
        let series = |name: &str| {
            value(
                &metrics,
                &format!("metaprotocol_fault_{name}_total{{listener=\"in\",filter=\"fault\"}}"),
            )
        };
        assert_eq!(series("overflow"), Some(1.0));
        assert_eq!(series("delays_injected"), Some(2.0));
        // A call that ends while held (its delay over, or its caller gone) lets go of its fault.
        drop(first);
        assert!(matches!(request.decide(&*filter), FilterDecision::Wait(_)));
        let FilterDecision::Wait(waiting) = second else {
            return Err(ConfigError::new("", "not a wait"));
        };
        assert!(matches!(waiting.await.decision, FilterDecision::Reply(_)));
        assert!(matches!(request.decide(&*filter), FilterDecision::Wait(_)));
        assert_eq!(series("overflow"), Some(1.0));
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = vec![
            (json!({}), "", "needs `delay`, `abort` or both"),
            (
                json!({ "abort": { "kind": "teapot" } }),
                "abort.kind",
                "unknown local reply kind",
            ),
            (
                json!({ "abort": { "percentage": 101 } }),
                "abort.percentage",
                "not between 0 and 100",
            ),
            (
                json!({ "delay": { "fixed_delay": "0s" } }),
                "delay.fixed_delay",
                "greater than 0",
            ),
            (
                json!({ "delay": { "fixed_delay": "soon" } }),
                "delay.fixed_delay",
                "soon",
            ),
            (
                json!({ "delay": { "fixed_delay": "1h" } }),
                "delay.fixed_delay",
                "must be less than 15s",
            ),
            (
                json!({ "max_active_faults": 0, "abort": {} }),
                "max_active_faults",
                "at least 1",
            ),
        ];
        assert_rejected(NAME, cases);
    }
}
