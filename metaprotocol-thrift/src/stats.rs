//! Process-wide counters for what a frame's encoding could not carry.
//!
//! Header edits (request or response mutations) need THeader info headers; frames travelling
//! framed or unframed are forwarded unchanged instead, and THeader headers are dropped when a
//! frame is translated to a transport without headers. Both are counted here, for every thrift
//! codec in the process, and logged once (at `warn`) the first time they happen, so that a
//! misconfiguration is visible without flooding the log. The engine exports them through
//! `CodecFactory::counters` as `metaprotocol_codec_mutations_not_applied_total` and
//! `metaprotocol_codec_headers_dropped_total`.

use std::sync::atomic::{AtomicU64, Ordering};

static MUTATIONS_NOT_APPLIED: AtomicU64 = AtomicU64::new(0);
static HEADERS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// How many frames had a non-empty mutation that could not be written (their transport has no
/// headers); such frames were forwarded unchanged.
pub fn mutations_not_applied() -> u64 {
    MUTATIONS_NOT_APPLIED.load(Ordering::Relaxed)
}

/// How many THeader frames lost their info headers because they were re-encoded in a
/// transport without headers.
pub fn headers_dropped() -> u64 {
    HEADERS_DROPPED.load(Ordering::Relaxed)
}

pub(crate) fn note_mutation_not_applied() {
    if MUTATIONS_NOT_APPLIED.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!(
            "thrift: header mutation on a framed or unframed frame cannot be applied (only \
             THeader carries headers); forwarding such frames unchanged, counted in \
             metaprotocol_codec_mutations_not_applied_total"
        );
    }
}

pub(crate) fn note_headers_dropped() {
    if HEADERS_DROPPED.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!(
            "thrift: THeader info headers dropped when translating to a transport without \
             headers; counted in metaprotocol_codec_headers_dropped_total"
        );
    }
}
