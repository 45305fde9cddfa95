//! Trace contexts in request metadata: read from W3C Trace Context (`traceparent`,
//! `tracestate`), B3 (`b3`, or `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`) or
//! bRPC's own `trace_id`/`span_id` (which the bRPC codec reports as metadata), and written back
//! as W3C (and B3) into the upstream request's mutation.

use metaprotocol_core::{ByteStr, Metadata, Mutation};

/// The longest `tracestate` carried on; a longer one is dropped, as W3C allows.
const MAX_TRACESTATE: usize = 512;
/// The most list members a `tracestate` may have (W3C); one with more is dropped.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Where an incoming context came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    W3c,
    B3,
    Brpc,
}

/// A caller's span, read from a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Incoming {
    pub trace_id: u128,
    pub span_id: u64,
    /// The caller's sampling decision; `None` when it left the decision to us (B3 without a
    /// sampling state). bRPC, which has no flag, counts as sampled.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, carried on unchanged.
    pub tracestate: Option<ByteStr>,
    pub source: Source,
}

/// The caller's context, in the first format that is present and valid: W3C, then B3 (single
/// then multiple keys), then bRPC's.
pub(crate) fn extract(metadata: &Metadata) -> Option<Incoming> {
    w3c(metadata)
        .or_else(|| b3_single(metadata))
        .or_else(|| b3_multi(metadata))
        .or_else(|| brpc(metadata))
}

fn w3c(metadata: &Metadata) -> Option<Incoming> {
    let header = metadata.get("traceparent")?;
    let mut parts = header.splitn(5, '-');
    let version = parts.next().filter(|v| v.len() == 2 && *v != "ff")?;
    hex_u8(version)?;
    let trace_id = hex_u128(parts.next().filter(|t| t.len() == 32)?)?;
    let span_id = hex_u64(parts.next().filter(|s| s.len() == 16)?)?;
    let flags = hex_u8(parts.next().filter(|f| f.len() == 2)?)?;
    // Version 00 has exactly four fields; later versions may add more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let tracestate = metadata
        .get("tracestate")
        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
        .filter(|s| list_members(s) <= MAX_TRACESTATE_MEMBERS)
        .and_then(|_| metadata.get_shared("tracestate"));
    valid(Incoming {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        tracestate,
        source: Source::W3c,
    })
}

/// The members of a `tracestate` list (empty ones, which W3C allows, are not members).
fn list_members(tracestate: &str) -> usize {
    tracestate
        .split(',')
        .filter(|member| !member.trim_matches([' ', '\t']).is_empty())
        .count()
}

/// A sampling decision sent without a context: a `b3` value of the decision alone (`0`, `1` or
/// `d`), which B3 allows (a caller that does not sample need not send ids).
pub(crate) fn decision_alone(metadata: &Metadata) -> Option<bool> {
    match metadata.get("b3")? {
        "0" => Some(false),
        "1" | "d" => Some(true),
        _ => None,
    }
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
fn b3_single(metadata: &Metadata) -> Option<Incoming> {
    let mut parts = metadata.get("b3")?.split('-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = hex_u64(parts.next().filter(|s| s.len() == 16)?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    b3(trace_id, span_id, sampled)
}

fn b3_multi(metadata: &Metadata) -> Option<Incoming> {
    let trace_id = b3_trace_id(metadata.get("x-b3-traceid")?)?;
    let span_id = hex_u64(metadata.get("x-b3-spanid").filter(|s| s.len() == 16)?)?;
    let sampled = match (metadata.get("x-b3-flags"), metadata.get("x-b3-sampled")) {
        // Debug implies sampled.
        (Some("1"), _) | (_, Some("1" | "true")) => Some(true),
        (_, None) => None,
        (_, Some(_)) => Some(false),
    };
    b3(trace_id, span_id, sampled)
}

/// A B3 context (B3 has no `tracestate`), if its ids are valid.
fn b3(trace_id: u128, span_id: u64, sampled: Option<bool>) -> Option<Incoming> {
    valid(Incoming {
        trace_id,
        span_id,
        sampled,
        tracestate: None,
        source: Source::B3,
    })
}

/// bRPC's `RpcRequestMeta.trace_id` and `span_id` (64-bit, in decimal).
fn brpc(metadata: &Metadata) -> Option<Incoming> {
    let number = |key: &str| -> Option<u64> {
        let value: i64 = metadata.get(key)?.parse().ok()?;
        Some(value as u64)
    };
    valid(Incoming {
        trace_id: u128::from(number("trace_id")?),
        span_id: number("span_id")?,
        sampled: Some(true),
        tracestate: None,
        source: Source::Brpc,
    })
}

/// `Some(incoming)` unless an id is all zeros (invalid in every format).
fn valid(incoming: Incoming) -> Option<Incoming> {
    (incoming.trace_id != 0 && incoming.span_id != 0).then_some(incoming)
}

/// A B3 trace id: 16 or 32 lowercase hex digits.
fn b3_trace_id(text: &str) -> Option<u128> {
    match text.len() {
        16 => hex_u64(text).map(u128::from),
        32 => hex_u128(text),
        _ => None,
    }
}

fn hex_u128(text: &str) -> Option<u128> {
    lower_hex(text)
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_u8(text: &str) -> Option<u8> {
    lower_hex(text)
        .then(|| u8::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_u64(text: &str) -> Option<u64> {
    lower_hex(text)
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

/// W3C and B3 ids are lowercase hexadecimal.
fn lower_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What to write into an upstream request: the trace, the caller (the attempt's span) and
/// whether it is sampled.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    /// The parent of `span_id` (B3's `x-b3-parentspanid`), if it has one.
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<&'a ByteStr>,
    pub b3: bool,
}

impl Outgoing<'_> {
    /// Writes the context into `mutation`, replacing what the caller sent.
    pub fn inject(&self, mutation: &mut Mutation) {
        let flags = u8::from(self.sampled);
        mutation.set(
            ByteStr::from_static("traceparent"),
            ByteStr::from(format!(
                "00-{:032x}-{:016x}-{flags:02x}",
                self.trace_id, self.span_id
            )),
        );
        match self.tracestate {
            Some(state) => mutation.set(ByteStr::from_static("tracestate"), state.clone()),
            None => mutation.remove(ByteStr::from_static("tracestate")),
        }
        if self.b3 {
            mutation.remove(ByteStr::from_static("b3"));
            let sets = [
                ("x-b3-traceid", format!("{:032x}", self.trace_id)),
                ("x-b3-spanid", format!("{:016x}", self.span_id)),
                ("x-b3-sampled", flags.to_string()),
            ];
            for (key, value) in sets {
                mutation.set(ByteStr::from_static(key), ByteStr::from(value));
            }
            let parent = ByteStr::from_static("x-b3-parentspanid");
            match self.parent_span_id {
                Some(id) => mutation.set(parent, ByteStr::from(format!("{id:016x}"))),
                None => mutation.remove(parent),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (ByteStr::from_static(k), ByteStr::from_static(v)))
            .collect()
    }

    const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;
    const SPAN: u64 = 0x00f0_67aa_0ba9_02b7;

    #[test]
    fn w3c_traceparent_and_tracestate() {
        let md = metadata(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let incoming = extract(&md);
        assert_eq!(
            incoming,
            Some(Incoming {
                trace_id: TRACE,
                span_id: SPAN,
                sampled: Some(true),
                tracestate: Some(ByteStr::from_static("congo=t61rcWkgMzE")),
                source: Source::W3c,
            })
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(extract(&metadata(&[("traceparent", bad)])), None, "{bad}");
        }
        let future: Metadata = [(
            ByteStr::from_static("traceparent"),
            ByteStr::from_static("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more"),
        )]
        .into_iter()
        .collect();
        assert!(extract(&future).is_some_and(|i| i.sampled == Some(false)));
    }

    /// W3C allows 32 list members in a `tracestate`: one with more is not carried on.
    #[test]
    fn a_tracestate_of_more_than_32_members_is_dropped() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = |members: usize| {
            let list: Vec<String> = (0..members).map(|i| format!("k{i}=v")).collect();
            // Empty members (and blanks) are allowed, and are no members.
            format!("{}, ,", list.join(","))
        };
        for (members, kept) in [(32, true), (33, false)] {
            let md: Metadata = [
                (
                    ByteStr::from_static("traceparent"),
                    ByteStr::from_static(traceparent),
                ),
                (
                    ByteStr::from_static("tracestate"),
                    ByteStr::from(state(members)),
                ),
            ]
            .into_iter()
            .collect();
            let incoming = extract(&md);
            assert!(incoming.is_some(), "the traceparent stands");
            assert_eq!(
                incoming.and_then(|i| i.tracestate).is_some(),
                kept,
                "{members} members"
            );
        }
    }

    /// Version and flags are lowercase hex digits, as the ids are: `FF` is not a future version
    /// (it is `ff`, which is forbidden), and a sign is no digit.
    #[test]
    fn traceparent_version_and_flags_are_lowercase_hex() {
        for bad in [
            "FF-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+1-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0B",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
        ] {
            assert_eq!(extract(&metadata(&[("traceparent", bad)])), None, "{bad}");
        }
        let future = metadata(&[(
            "traceparent",
            "0a-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0b",
        )]);
        assert!(extract(&future).is_some_and(|i| i.sampled == Some(true)));
    }

    #[test]
    fn b3_single_multi_and_brpc() {
        let single = metadata(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        assert!(extract(&single).is_some_and(|i| i.trace_id == TRACE
            && i.sampled == Some(false)
            && i.source == Source::B3));
        let multi = metadata(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert!(
            extract(&multi)
                .is_some_and(|i| i.trace_id == 0xa3ce_929d_0e0e_4736 && i.sampled == Some(true))
        );
        let brpc = metadata(&[("trace_id", "-2"), ("span_id", "77")]);
        assert!(
            extract(&brpc).is_some_and(|i| i.trace_id == u128::from(u64::MAX - 1)
                && i.span_id == 77
                && i.source == Source::Brpc)
        );
        let w3c_first = metadata(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        assert!(extract(&w3c_first).is_some_and(|i| i.source == Source::W3c));
        assert_eq!(extract(&metadata(&[("method", "x")])), None);
    }

    #[test]
    fn the_outgoing_context_replaces_the_callers() {
        let state = ByteStr::from_static("congo=t61rcWkgMzE");
        let mut mutation = Mutation::new();
        Outgoing {
            trace_id: TRACE,
            span_id: 0xb7,
            parent_span_id: Some(SPAN),
            sampled: true,
            tracestate: Some(&state),
            b3: true,
        }
        .inject(&mut mutation);
        let mut md = metadata(&[("b3", "stale"), ("traceparent", "stale")]);
        mutation.apply_to(&mut md);
        let get = |k: &str| md.get(k).map(str::to_owned);
        assert_eq!(
            get("traceparent").as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00000000000000b7-01")
        );
        assert_eq!(get("tracestate").as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(get("b3"), None);
        assert_eq!(
            get("x-b3-parentspanid").as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(get("x-b3-sampled").as_deref(), Some("1"));
        let back = extract(&md);
        assert!(back.is_some_and(|i| i.trace_id == TRACE && i.span_id == 0xb7));
    }
}
