//! `local_ratelimit`: token buckets kept by each proxy instance.
//!
//! A default bucket, and conditional buckets for requests matching a rule (first match wins);
//! a request takes a token from its bucket or is answered with the protocol's over-limit error.
//! Taking a token is one compare-and-swap ([`bucket`]), with no lock and no allocation.
//!
//! ```yaml
//! - name: local_ratelimit
//!   config:
//!     token_bucket: { max_tokens: 100, tokens_per_fill: 100, fill_interval: 1s }
//!     conditions:
//!       - match: { metadata: [ { key: method, exact: sayHello } ] }
//!         token_bucket: { max_tokens: 10, tokens_per_fill: 10, fill_interval: 1s }
//! ```

mod bucket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use metaprotocol_core::{FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext};
use serde::Deserialize;

use self::bucket::MIN_FILL_INTERVAL;
pub(crate) use self::bucket::TokenBucket;
use super::{FilterContext, routing_view, rule};
use crate::config::{ConfigError, MatchSpec, from_value};
use crate::route::RequestMatcher;
use crate::stats::Counter;

/// The filter's registered name.
pub(crate) const NAME: &str = "local_ratelimit";

/// The filter's config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocalRateLimitSpec {
    /// The bucket of requests no condition matches; without it they are not limited.
    #[serde(default)]
    token_bucket: Option<TokenBucketSpec>,
    /// Buckets for matching requests, tried in order.
    #[serde(default)]
    conditions: Vec<ConditionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionSpec {
    #[serde(rename = "match")]
    match_: MatchSpec,
    token_bucket: TokenBucketSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketSpec {
    max_tokens: u32,
    #[serde(default = "one")]
    tokens_per_fill: u32,
    #[serde(with = "humantime_serde")]
    fill_interval: Duration,
}

fn one() -> u32 {
    1
}

impl TokenBucketSpec {
    fn build(&self, now: Instant) -> Result<TokenBucket, ConfigError> {
        if self.max_tokens == 0 {
            return Err(ConfigError::new("max_tokens", "must be at least 1"));
        }
        if self.tokens_per_fill == 0 {
            return Err(ConfigError::new("tokens_per_fill", "must be at least 1"));
        }
        if self.fill_interval < MIN_FILL_INTERVAL {
            return Err(ConfigError::new(
                "fill_interval",
                format!("must be at least {MIN_FILL_INTERVAL:?}"),
            ));
        }
        Ok(TokenBucket::new(
            self.max_tokens,
            self.tokens_per_fill,
            self.fill_interval,
            now,
        ))
    }
}

/// Builds the filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    let spec: LocalRateLimitSpec = from_value(config)?;
    let now = Instant::now();
    let default = spec
        .token_bucket
        .as_ref()
        .map(|bucket| bucket.build(now).map_err(|e| e.within("token_bucket")))
        .transpose()?;
    let conditions = spec
        .conditions
        .iter()
        .enumerate()
        .map(|(i, condition)| {
            let at = format!("conditions[{i}]");
            let matcher = rule(&condition.match_).map_err(|e| e.within(&format!("{at}.match")))?;
            let bucket = condition
                .token_bucket
                .build(now)
                .map_err(|e| e.within(&format!("{at}.token_bucket")))?;
            Ok((matcher, bucket))
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    if default.is_none() && conditions.is_empty() {
        return Err(ConfigError::new(
            "token_bucket",
            "needed when there are no conditions: the filter would limit nothing",
        ));
    }
    let decisions = |decision| {
        context.metrics().counter_with(
            "ratelimit_decisions",
            "Requests a rate limit filter let through (ok) or refused (over_limit), and what a global limit did when its backend failed or a request lacked a descriptor key (missing_descriptor)",
            &[("decision", decision)],
        )
    };
    Ok(Arc::new(LocalRateLimit {
        default,
        conditions,
        ok: decisions("ok"),
        over_limit: decisions("over_limit"),
    }))
}

/// The running filter.
struct LocalRateLimit {
    default: Option<TokenBucket>,
    conditions: Vec<(RequestMatcher, TokenBucket)>,
    ok: Counter,
    over_limit: Counter,
}

impl L7Filter for LocalRateLimit {
    fn name(&self) -> &str {
        NAME
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        let view = routing_view(ctx);
        let bucket = self
            .conditions
            .iter()
            .find(|(matcher, _)| matcher.matches(&view, &ctx.record.connection))
            .map(|(_, bucket)| bucket)
            .or(self.default.as_ref());
        let Some(bucket) = bucket else {
            return FilterDecision::Continue;
        };
        if bucket.try_take(ctx.record.timings.received) {
            self.ok.inc();
            FilterDecision::Continue
        } else {
            self.over_limit.inc();
            FilterDecision::Reply(LocalReply::new(
                LocalReplyKind::OverLimit,
                "metaprotocol-proxy: rate limited (local_ratelimit)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::filters::testing::{TestRequest, assert_rejected, build as build_filter, value};
    use crate::stats::Metrics;

    fn limited(decision: &FilterDecision) -> bool {
        matches!(decision, FilterDecision::Reply(reply) if reply.kind == LocalReplyKind::OverLimit)
    }

    #[test]
    fn conditions_take_from_their_own_bucket_and_the_rest_from_the_default()
    -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filter = build_filter(
            NAME,
            json!({
                "token_bucket": { "max_tokens": 3, "fill_interval": "1h" },
                "conditions": [
                    { "match": { "metadata": [ { "key": "method", "exact": "sayHello" } ] },
                      "token_bucket": { "max_tokens": 1, "fill_interval": "1h" } }
                ]
            }),
            &metrics,
        )?;
        let hello = TestRequest::new(&[("method", "sayHello")]);
        let other = TestRequest::new(&[("method", "sayBye")]);
        assert!(!limited(&hello.decide(&*filter)));
        assert!(limited(&hello.decide(&*filter)));
        for _ in 0..3 {
            assert!(!limited(&other.decide(&*filter)));
        }
        assert!(limited(&other.decide(&*filter)));
        let series = "metaprotocol_ratelimit_decisions_total{listener=\"in\",filter=\"local_ratelimit\",decision=";
        assert_eq!(value(&metrics, &format!("{series}\"ok\"}}")), Some(4.0));
        assert_eq!(
            value(&metrics, &format!("{series}\"over_limit\"}}")),
            Some(2.0)
        );
        Ok(())
    }

    #[test]
    fn without_a_default_bucket_unmatched_requests_pass() -> Result<(), ConfigError> {
        let filter = build_filter(
            NAME,
            json!({ "conditions": [
                { "match": { "source_ips": [ "10.0.0.0/8" ] },
                  "token_bucket": { "max_tokens": 1, "fill_interval": "1h" } } ] }),
            &Metrics::new(),
        )?;
        let outside = TestRequest::new(&[]);
        let inside = TestRequest::new(&[]).from("10.1.2.3");
        for _ in 0..5 {
            assert!(!limited(&outside.decide(&*filter)));
        }
        assert!(!limited(&inside.decide(&*filter)));
        assert!(limited(&inside.decide(&*filter)));
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = vec![
            (
                json!({}),
                "token_bucket",
                "needed when there are no conditions",
            ),
            (
                json!({ "token_bucket": { "max_tokens": 0, "fill_interval": "1s" } }),
                "token_bucket.max_tokens",
                "at least 1",
            ),
            (
                json!({ "token_bucket": { "max_tokens": 5, "tokens_per_fill": 0, "fill_interval": "1s" } }),
                "token_bucket.tokens_per_fill",
                "at least 1",
            ),
            (
                json!({ "token_bucket": { "max_tokens": 5, "fill_interval": "10ms" } }),
                "token_bucket.fill_interval",
                "at least 50ms",
            ),
            (
                json!({ "token_bucket": { "max_tokens": "5", "fill_interval": "1s" } }),
                "token_bucket.max_tokens",
                "invalid type",
            ),
            (
                json!({ "token_bucket": { "max_tokens": 5, "fill_interval": "1s", "burst": 1 } }),
                "token_bucket.burst",
                "unknown field `burst`",
            ),
            (
                json!({ "conditions": [ { "match": { "metadata": [ { "key": "m" } ] },
                        "token_bucket": { "max_tokens": 1, "fill_interval": "1s" } } ] }),
                "conditions[0].match.metadata[0]",
                "needs one of",
            ),
        ];
        assert_rejected(NAME, cases);
    }
}
