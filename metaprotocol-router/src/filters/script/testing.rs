//! What the tests of the script filters share: requests, records, contexts, and reading the
//! outcome of a hook.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use metaprotocol_core::{
    ByteStr, CompleteContext, ConnectionInfo, FilterDecision, L7Filter, LocalReplyKind, Message,
    MessageKind, Mutation, RequestContext, RequestRecord,
};

use crate::filters::script::{ScriptState, StateValue};
use crate::filters::{FilterContext, SharedClients};
use crate::stats::Metrics;

/// What the tests return.
pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A filter of listener `in` named `filter`, its series in `metrics`.
pub(crate) fn context(metrics: &Metrics, filter: &str) -> FilterContext {
    FilterContext::new(
        "in".into(),
        metrics.root().with_label("filter", filter),
        SharedClients::default(),
    )
}

/// `base` with the members of `extra` added (a filter's config with a test's own fields).
pub(crate) fn config(mut base: serde_json::Value, extra: &serde_json::Value) -> serde_json::Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    base
}

/// The record of a request from 127.0.0.1:4000 on listener `in`.
pub(crate) fn record() -> RequestRecord {
    let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
    RequestRecord::new(Arc::new(ConnectionInfo::new("in".into(), addr, addr)), 10)
}

/// A request with the metadata `pairs`.
pub(crate) fn request(pairs: &[(&'static str, &'static str)]) -> Message {
    let mut message = Message::new(MessageKind::Request, 1, Bytes::new());
    for (k, v) in pairs {
        message.metadata.insert(*k, *v);
    }
    message
}

/// Runs `filter`'s `on_request`: its decision and the mutation it added.
pub(crate) fn on_request(
    filter: &dyn L7Filter,
    message: &Message,
    record: &mut RequestRecord,
) -> (FilterDecision, Mutation) {
    let mut mutation = Mutation::new();
    let decision = filter.on_request(&mut RequestContext {
        request: message,
        mutation: &mut mutation,
        record,
    });
    (decision, mutation)
}

/// The kind of the reply `decision` answers with, if it does.
pub(crate) fn reply_kind(decision: &FilterDecision) -> Option<LocalReplyKind> {
    match decision {
        FilterDecision::Reply(reply) => Some(reply.kind),
        _ => None,
    }
}

/// True if a series of `metrics` with `label` has the value `value`.
pub(crate) fn counted(metrics: &Metrics, label: &str, value: u64) -> bool {
    metrics
        .render()
        .lines()
        .any(|line| line.contains(label) && line.ends_with(&format!(" {value}")))
}

/// Runs `filter`'s `on_complete` for `request`, which got no response.
pub(crate) fn complete(filter: &dyn L7Filter, request: &Message, record: &RequestRecord) {
    filter.on_complete(&CompleteContext {
        request,
        response: None,
        record,
    });
}

/// Asserts what the tests' request hooks leave in `record`: the routing key `lane` set to
/// `fast`, and the state value `seen`.
pub(crate) fn assert_fast_lane_and_seen(record: &RequestRecord, seen: &StateValue) {
    assert_eq!(
        record.routing_keys().get("lane").map(ByteStr::as_str),
        Some("fast")
    );
    let state = record.extensions.get::<ScriptState>();
    assert_eq!(state.and_then(|s| s.get(b"seen")), Some(seen));
}
