//! The engine's own completion stage, run for every request right after the filters'
//! `on_complete`: the request's final record, classified once ([`RequestOutcome`]), is counted
//! (per listener and method, per route, in the Istio series), logged, and its spans exported.

use metaprotocol_core::{Message, RequestRecord, keys};

use super::ListenerContext;
use crate::route::Route;
use crate::router::Routed;
use crate::stats::{Completion, IstioReporter, RequestOutcome};
use crate::trace::RequestSpan;

/// Observes a finished request: `response` when the upstream's answer was forwarded, `route`
/// when it matched one, `routed` when it was routed (sent or tried upstream), `span` when its
/// listener traces.
pub(crate) fn complete(
    ctx: &ListenerContext,
    request: &Message,
    response: Option<&Message>,
    record: &RequestRecord,
    route: Option<&Route>,
    routed: Option<&Routed>,
    span: Option<Box<RequestSpan>>,
) {
    let outcome = RequestOutcome::of(&record.outcome);
    let done = Completion {
        outcome,
        duration: record.timings.duration().unwrap_or_default(),
        rx_bytes: record.bytes_received,
        tx_bytes: record.bytes_sent,
    };
    let method = request.metadata.value_bytes(keys::METHOD);
    ctx.stats.completed(method, &done);
    if let Some(route) = route {
        route.stats().completed(&done);
    }
    if ctx.istio.is_some() {
        istio(ctx, record, routed, &done);
    }
    if let Some(access_log) = &ctx.access_log {
        let trace_id = span.as_ref().map(|span| span.trace_id());
        access_log.log(request, response, record, routed, outcome, trace_id);
    }
    if let (Some(tracer), Some(span)) = (&ctx.tracer, span) {
        tracer.finish(span, request, record, outcome);
    }
}

/// Counts the request in the Istio series of its destination: the endpoint it went to, else its
/// cluster, else nowhere known.
fn istio(
    ctx: &ListenerContext,
    record: &RequestRecord,
    routed: Option<&Routed>,
    done: &Completion,
) {
    let count = |reporter: Option<&IstioReporter>| {
        if let Some(reporter) = reporter {
            let mutual_tls = record.connection.peer_identity.is_some();
            reporter.record(
                done.outcome,
                record.outcome.flags,
                mutual_tls,
                done.duration,
            );
        }
    };
    match routed {
        Some(routed) => match routed.host() {
            Some(host) => count(host.istio.as_deref()),
            None => count(routed.cluster().snapshot().istio.as_deref()),
        },
        None => count(ctx.istio.as_deref()),
    }
}
