//! `rbac`: authorization of each request by who sent it and what it asks for, in the manner of
//! Istio's AuthorizationPolicy.
//!
//! A filter has an action and policies ([`policy`]). With `action: allow`, a request is let
//! through only if some policy matches it: once an allow filter is in the chain, anything not
//! allowed is denied. With `action: deny`, a request that some policy matches is refused. A
//! chain may hold both; a request must pass every filter, so a deny always wins. Refused
//! requests get the protocol's "unauthorized" error. In `shadow` mode the filter only counts
//! what it would have decided, and lets every request through: a policy can be tried on live
//! traffic before it is enforced.
//!
//! When the listener's access log shows them (`%RBAC_POLICY%` ...), each filter records its
//! decision and the policy that made it in the request's record
//! ([`Authorization`](metaprotocol_core::Authorization)), as Envoy's RBAC filters put theirs in
//! the dynamic metadata: the policy's name is shared, not copied, and a listener whose log
//! shows none of them records nothing. A log that names only the policy that refused a request
//! (`%RESPONSE_CODE_DETAILS%`) has the enforced filters record their refusals alone, so that the
//! requests they let through, nearly all, pay nothing for it.
//!
//! ```yaml
//! - name: rbac
//!   config:
//!     action: allow
//!     policies:
//!       - name: readers
//!         principals: [ "spiffe://cluster.local/ns/default/sa/reader" ]
//!         metadata: [ { key: method, prefix: get } ]
//!       - name: operators
//!         namespaces: [ ops ]
//! ```

mod policy;

use std::collections::HashMap;
use std::sync::Arc;

use metaprotocol_core::{
    AuthorizationDecision, FilterDecision, L7Filter, LocalReply, LocalReplyKind, RequestContext,
};
use serde::Deserialize;

use self::policy::{Policy, PolicySpec};
use super::{FilterContext, routing_view};
use crate::config::{ConfigError, from_value};
use crate::stats::Counter;

/// The filter's registered name.
pub(crate) const NAME: &str = "rbac";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RbacSpec {
    action: Action,
    #[serde(default)]
    shadow: bool,
    policies: Vec<PolicySpec>,
}

/// What a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    /// Matching requests are allowed, all others denied.
    Allow,
    /// Matching requests are denied, all others allowed.
    Deny,
}

/// Builds the filter from its config.
pub(crate) fn build(
    config: &serde_json::Value,
    context: &FilterContext,
) -> Result<Arc<dyn L7Filter>, ConfigError> {
    let spec: RbacSpec = from_value(config)?;
    if spec.policies.is_empty() {
        return Err(ConfigError::new(
            "policies",
            "needs at least one policy (a policy without conditions matches every request)",
        ));
    }
    let policies = spec
        .policies
        .iter()
        .enumerate()
        .map(|(i, policy)| Policy::new(policy).map_err(|e| e.within(&format!("policies[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    // A policy's name is what logs tell policies by (`%RBAC_POLICY%`), as Envoy's policies
    // are a map by name.
    let mut named = HashMap::with_capacity(policies.len());
    for (i, policy) in policies.iter().enumerate() {
        if let Some(first) = named.insert(&*policy.name, i) {
            return Err(ConfigError::new(
                format!("policies[{i}].name"),
                format!(
                    "`{}` is already the name of policies[{first}]; each policy needs a name of its own, which logs tell it by",
                    policy.name
                ),
            ));
        }
    }
    let decisions = |decision| {
        context.metrics().counter_with(
            "rbac_decisions",
            "Requests an rbac filter allowed or denied (shadow_*: what a shadow filter would have decided)",
            &[("decision", decision)],
        )
    };
    let (allowed, denied) = if spec.shadow {
        (decisions("shadow_allowed"), decisions("shadow_denied"))
    } else {
        (decisions("allowed"), decisions("denied"))
    };
    Ok(Arc::new(Rbac {
        action: spec.action,
        shadow: spec.shadow,
        policies,
        allowed,
        denied,
        logs_decisions: context.logs_authorization(),
        logs_refusals: context.logs_refusals() && !spec.shadow,
    }))
}

/// The running filter.
struct Rbac {
    action: Action,
    shadow: bool,
    policies: Vec<Policy>,
    allowed: Counter,
    denied: Counter,
    /// The listener's access log shows the decisions: each is recorded in the request's
    /// record (the policy's name shared, not copied).
    logs_decisions: bool,
    /// The listener's access log names the policy that refused a request
    /// (`%RESPONSE_CODE_DETAILS%`), and the filter is enforced: its refusals are recorded.
    logs_refusals: bool,
}

impl L7Filter for Rbac {
    fn name(&self) -> &str {
        NAME
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        let view = routing_view(ctx);
        let matched = self
            .policies
            .iter()
            .find(|policy| policy.matches(&view, &ctx.record.connection));
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
        };
        if self.logs_decisions || (self.logs_refusals && !allowed) {
            ctx.record.record_authorization(
                self.shadow,
                AuthorizationDecision {
                    allowed,
                    policy: matched.map(|policy| policy.name.clone()),
                },
            );
        }
        if allowed {
            self.allowed.inc();
            return FilterDecision::Continue;
        }
        self.denied.inc();
        tracing::debug!(
            listener = %ctx.record.connection.listener,
            peer = %ctx.record.connection.peer_addr,
            policy = matched.map(|p| &*p.name),
            shadow = self.shadow,
            "rbac denied a request"
        );
        if self.shadow {
            return FilterDecision::Continue;
        }
        FilterDecision::Reply(LocalReply::new(
            LocalReplyKind::Unauthorized,
            "metaprotocol-proxy: denied by an authorization policy (rbac)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::filters::testing::{
        TestRequest, assert_rejected, build as build_filter, build_in, rejection, value,
    };
    use crate::stats::Metrics;

    const READER: &str = "spiffe://cluster.local/ns/default/sa/reader";
    const WRITER: &str = "spiffe://cluster.local/ns/default/sa/writer";

    fn denied(decision: &FilterDecision) -> bool {
        matches!(decision, FilterDecision::Reply(reply) if reply.kind == LocalReplyKind::Unauthorized)
    }

    #[test]
    fn allow_lets_matching_requests_through_and_denies_the_rest() -> Result<(), ConfigError> {
        let filter = build_filter(
            NAME,
            json!({ "action": "allow", "policies": [
                { "name": "readers", "principals": [ READER ],
                  "metadata": [ { "key": "method", "prefix": "get" } ] },
                { "name": "local-admin", "source_ips": [ "10.0.0.0/8" ],
                  "not_principals": [ "*" ] } ] }),
            &Metrics::new(),
        )?;
        let cases = [
            (
                TestRequest::new(&[("method", "getUser")]).with_principal(READER),
                false,
            ),
            (
                TestRequest::new(&[("method", "setUser")]).with_principal(READER),
                true,
            ),
            (
                TestRequest::new(&[("method", "getUser")]).with_principal(WRITER),
                true,
            ),
            (TestRequest::new(&[("method", "getUser")]), true),
            (
                TestRequest::new(&[("method", "setUser")]).from("10.0.0.7"),
                false,
            ),
            (
                TestRequest::new(&[("method", "setUser")])
                    .from("10.0.0.7")
                    .with_principal(WRITER),
                true,
            ),
        ];
        for (i, (request, want_denied)) in cases.iter().enumerate() {
            assert_eq!(denied(&request.decide(&*filter)), *want_denied, "case {i}");
        }
        Ok(())
    }

    #[test]
    fn deny_refuses_matching_requests_only() -> Result<(), ConfigError> {
        let filter = build_filter(
            NAME,
            json!({ "action": "deny", "policies": [
                { "name": "no-writes-from-readers", "principals": [ "*/sa/reader" ],
                  "metadata": [ { "key": "method", "regex": "set.*|delete.*" } ] } ] }),
            &Metrics::new(),
        )?;
        let write = TestRequest::new(&[("method", "deleteUser")]);
        assert!(denied(&write.with_principal(READER).decide(&*filter)));
        let write = TestRequest::new(&[("method", "deleteUser")]);
        assert!(!denied(&write.with_principal(WRITER).decide(&*filter)));
        let read = TestRequest::new(&[("method", "getUser")]);
        assert!(!denied(&read.with_principal(READER).decide(&*filter)));
        Ok(())
    }

    #[test]
    fn shadow_mode_counts_what_it_would_do_and_allows_everything() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filter = build_filter(
            NAME,
            json!({ "action": "allow", "shadow": true, "policies": [
                { "name": "readers", "principals": [ READER ] } ] }),
            &metrics,
        )?;
        assert!(!denied(&TestRequest::new(&[]).decide(&*filter)));
        assert!(!denied(
            &TestRequest::new(&[])
                .with_principal(READER)
                .decide(&*filter)
        ));
        assert!(!denied(&TestRequest::new(&[]).decide(&*filter)));
        let series = "metaprotocol_rbac_decisions_total{listener=\"in\",filter=\"rbac\",decision=";
        assert_eq!(
            value(&metrics, &format!("{series}\"shadow_denied\"}}")),
            Some(2.0)
        );
        assert_eq!(
            value(&metrics, &format!("{series}\"shadow_allowed\"}}")),
            Some(1.0)
        );
        assert_eq!(value(&metrics, &format!("{series}\"denied\"}}")), None);
        Ok(())
    }

    /// With a log that shows them, each filter records its decision and the policy that made
    /// it, the enforced filters' apart from the shadow ones'; an allow filter's policy stays
    /// through a deny filter that matched nothing. With a log that names only the policy that
    /// refused a request (`%RESPONSE_CODE_DETAILS%`), the enforced filters record their
    /// refusals and nothing else. Without such a log, nothing is recorded.
    #[test]
    fn decisions_are_recorded_with_their_policy_when_a_log_shows_them() -> Result<(), ConfigError> {
        let metrics = Metrics::new();
        let filters = |decisions: bool, refusals: bool| {
            let context = |filter| {
                FilterContext::standalone("in", filter, &metrics)
                    .with_logged_authorization(decisions)
                    .with_logged_refusals(refusals)
            };
            let allow = build_in(
                NAME,
                json!({ "action": "allow", "policies": [
                    { "name": "getters", "metadata": [ { "key": "method", "prefix": "get" } ] },
                    { "name": "deleters", "metadata": [ { "key": "method", "prefix": "delete" } ] } ] }),
                &context("rbac"),
            )?;
            let deny = build_in(
                NAME,
                json!({ "action": "deny", "policies": [
                    { "name": "no-secrets", "metadata": [ { "key": "method", "exact": "getSecret" } ] } ] }),
                &context("rbac.1"),
            )?;
            let shadow = build_in(
                NAME,
                json!({ "action": "deny", "shadow": true, "policies": [
                    { "name": "no-deletes", "metadata": [ { "key": "method", "prefix": "delete" } ] } ] }),
                &context("rbac.2"),
            )?;
            Ok::<_, ConfigError>([shadow, allow, deny])
        };
        let decision = |allowed, policy: Option<&str>| {
            Some(AuthorizationDecision {
                allowed,
                policy: policy.map(Arc::from),
            })
        };
        let logged = filters(true, true)?;
        let logged: Vec<&dyn L7Filter> = logged.iter().map(|f| &**f).collect();
        for (method, enforced, shadow) in [
            (
                "getUser",
                decision(true, Some("getters")),
                decision(true, None),
            ),
            (
                "getSecret",
                decision(false, Some("no-secrets")),
                decision(true, None),
            ),
            ("setUser", decision(false, None), decision(true, None)),
            (
                "deleteUser",
                decision(true, Some("deleters")),
                decision(false, Some("no-deletes")),
            ),
        ] {
            let record = TestRequest::new(&[("method", method)]).run_each(&logged);
            let recorded = record.authorization().cloned().unwrap_or_default();
            assert_eq!(recorded.enforced, enforced, "{method}");
            assert_eq!(recorded.shadow, shadow, "{method}");
        }
        let refusals = filters(false, true)?;
        let refusals: Vec<&dyn L7Filter> = refusals.iter().map(|f| &**f).collect();
        for (method, enforced) in [
            ("getUser", None),
            ("getSecret", decision(false, Some("no-secrets"))),
            ("setUser", decision(false, None)),
            ("deleteUser", None),
        ] {
            let record = TestRequest::new(&[("method", method)]).run_each(&refusals);
            let recorded = record.authorization().cloned();
            assert_eq!(recorded.and_then(|a| a.enforced), enforced, "{method}");
            let allowed = enforced.is_none();
            assert_eq!(record.authorization().is_none(), allowed, "{method}");
        }
        let unlogged = filters(false, false)?;
        let unlogged: Vec<&dyn L7Filter> = unlogged.iter().map(|f| &**f).collect();
        let record = TestRequest::new(&[("method", "getSecret")]).run_each(&unlogged);
        assert_eq!(record.authorization(), None);
        Ok(())
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = vec![
            (
                json!({ "action": "allow", "policies": [] }),
                "policies",
                "at least one policy",
            ),
            (
                json!({ "action": "permit", "policies": [] }),
                "action",
                "unknown variant `permit`",
            ),
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "source_ips": [ "10.0.0.0/40" ] } ] }),
                "policies[0].source_ips[0]",
                "prefix length",
            ),
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "principals": [ "" ] } ] }),
                "policies[0].principals[0]",
                "must not be empty",
            ),
            // A `*` inside a pattern would be compared as a character: this deny policy would
            // refuse no one.
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "not_principals": [ "spiffe://td/ns/*/sa/admin" ] } ] }),
                "policies[0].not_principals[0]",
                "`*` may only stand alone, or begin or end the pattern",
            ),
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "principals": [ "*/sa/admin*" ] } ] }),
                "policies[0].principals[0]",
                "`*` may only stand alone",
            ),
            // Written empty (a template that rendered no principals, say), a list would not
            // be a condition: the policy would match every client.
            (
                json!({ "action": "allow", "policies": [ { "name": "p", "principals": [] } ] }),
                "policies[0].principals",
                "must not be empty",
            ),
            (
                json!({ "action": "allow", "policies": [ { "name": "p", "namespaces": [] } ] }),
                "policies[0].namespaces",
                "must not be empty",
            ),
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "not_namespaces": [ "ns/a" ] } ] }),
                "policies[0].not_namespaces[0]",
                "a namespace has no `/`",
            ),
            (
                json!({ "action": "allow", "policies": [ { "name": "p", "source_ips": [] } ] }),
                "policies[0].source_ips",
                "must not be empty",
            ),
            (
                json!({ "action": "deny", "policies": [ { "name": "p", "metadata": [ { "key": "m", "regex": "(" } ] } ] }),
                "policies[0].metadata[0].regex",
                "invalid regex",
            ),
            // A log line's %RBAC_POLICY% could not tell the two apart (Envoy's policies are a
            // map by name).
            (
                json!({ "action": "allow", "policies": [
                    { "name": "readers", "principals": [ "*/sa/reader" ] },
                    { "name": "ops", "namespaces": [ "ops" ] },
                    { "name": "readers", "source_ips": [ "10.0.0.0/8" ] } ] }),
                "policies[2].name",
                "`readers` is already the name of policies[0]",
            ),
        ];
        assert_rejected(NAME, cases);
        let err = rejection(NAME, json!({ "policies": [] }));
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("config", "missing field `action`")
        );
    }
}
