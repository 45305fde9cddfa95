//! Access logs: one line per request, written when the request completes (after the filters'
//! `on_complete`), as JSON or a format string of Envoy-style command operators.
//!
//! The request path only captures the line's facts ([`LogEntry`]: a few copies and reference
//! counts) and queues them; a writer thread per path formats and writes ([`sink`]). A full
//! queue drops the line and counts it before anything is captured, so a slow or stuck disk
//! never slows a request. Files are reopened
//! on [`crate::Proxy::reopen_access_logs`] (the binary calls it on SIGHUP, for logrotate).
//! Sampling keeps a share of the requests of each outcome.

mod format;
mod sink;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use metaprotocol_core::{
    Authorization, ByteStr, ConnectionInfo, Message, Metadata, RequestRecord, ResponseFlags,
};
use smallvec::SmallVec;

use self::format::LogFormat;
pub(crate) use self::format::{check as check_format, rfc3339};
use self::sink::Sink;
pub(crate) use self::sink::Sinks;
use crate::config::{AccessLogSpec, ConfigError};
use crate::router::{KeptForLog, Routed, TransportFailure};
use crate::server::ConnectionTermination;
use crate::stats::Counter;
use crate::stats::{MetricsScope, OUTCOMES, RequestOutcome};

/// The facts of one line, captured when the request completes.
#[derive(Debug)]
pub(crate) struct LogEntry {
    start_time: SystemTime,
    duration: Option<Duration>,
    connection: Arc<ConnectionInfo>,
    protocol: &'static str,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
    /// The proxy's address on the connection the last attempt went on (left empty when the
    /// format does not show it).
    upstream_local_address: Option<SocketAddr>,
    outcome: RequestOutcome,
    flags: ResponseFlags,
    /// The upstream answered (the outcome alone does not tell a one-way call sent from a call
    /// answered).
    answered: bool,
    request_id: RequestId,
    trace_id: Option<u128>,
    attempts: u32,
    bytes_received: u64,
    bytes_sent: u64,
    /// What the authorization filters decided (left empty when the format does not show it).
    authorization: Authorization,
    /// Why the last attempt's connection could not be made, when that failed the request (left
    /// empty when the format does not show it).
    transport_failure: Option<Arc<str>>,
    /// Why the proxy closed the connection the request came on, when the request ended once it
    /// had decided to (left empty when the format does not show it).
    connection_termination: Option<ConnectionTermination>,
    /// The values of the metadata keys the format reads ([`LogFormat::keys`]).
    metadata: SmallVec<[Option<ByteStr>; 4]>,
    /// The values of the keys of the upstream's answer's metadata the format reads
    /// ([`LogFormat::response_keys`]); empty when the proxy answered itself.
    response_metadata: SmallVec<[Option<ByteStr>; 1]>,
}

impl LogEntry {
    /// A line of a successful request of no metadata, for tests.
    #[cfg(test)]
    fn for_test() -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        Self {
            start_time: SystemTime::now(),
            duration: None,
            connection: Arc::new(ConnectionInfo::new("test".into(), addr, addr)),
            protocol: "dubbo",
            route: None,
            cluster: None,
            endpoint: None,
            upstream_local_address: None,
            outcome: RequestOutcome::SUCCESS,
            flags: ResponseFlags::default(),
            answered: false,
            request_id: RequestId::Number(1),
            trace_id: None,
            attempts: 1,
            bytes_received: 0,
            bytes_sent: 0,
            authorization: Authorization::default(),
            transport_failure: None,
            connection_termination: None,
            metadata: SmallVec::new(),
            response_metadata: SmallVec::new(),
        }
    }
}

/// The id a line shows for its request (`%REQUEST_ID%`).
#[derive(Debug)]
pub(crate) enum RequestId {
    /// The request id the client's frame carries.
    Number(u64),
    /// The call's own id as its client wrote it, for a protocol whose request ids are not the
    /// client's ([`CodecFactory::call_id_key`](metaprotocol_core::CodecFactory::call_id_key)).
    Text(ByteStr),
    /// A call of such a protocol without an id (a JSON-RPC notification).
    None,
}

/// A listener's access log.
#[derive(Debug)]
pub(crate) struct AccessLogger {
    format: Arc<LogFormat>,
    /// The request metadata keys the format reads, ready for lookups.
    request_keys: LineKeys,
    /// The keys of the upstream's answer's metadata the format reads, ready for lookups.
    response_keys: LineKeys,
    sink: Arc<Sink>,
    /// The share of each outcome logged, 0 to 1.
    sampling: [f64; OUTCOMES.len()],
    protocol: &'static str,
    /// The metadata key of a call's own id, for a protocol whose request ids are not the
    /// client's.
    call_id_key: Option<&'static str>,
    lines: Counter,
    dropped: Counter,
}

impl AccessLogger {
    /// The access log of a listener of `protocol` (whose calls' own ids are under
    /// `call_id_key`, if its request ids are not the client's) as `spec` describes it, its
    /// counters in `scope`, its writer from `sinks`.
    pub fn new(
        spec: &AccessLogSpec,
        protocol: &'static str,
        call_id_key: Option<&'static str>,
        scope: &MetricsScope,
        sinks: &Sinks,
    ) -> Result<Self, ConfigError> {
        let format = match (&spec.format, &spec.json_format) {
            (_, Some(fields)) => {
                LogFormat::json(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            (Some(text), None) if text == "text" => LogFormat::text(format::TEXT),
            (Some(format), None) if format != "json" => LogFormat::text(format),
            _ => LogFormat::json(format::JSON),
        }
        .map_err(|reason| ConfigError::new("format", reason))?;
        let default = spec.sampling.get("default").copied().unwrap_or(100.0);
        let sampling =
            OUTCOMES.map(|outcome| spec.sampling.get(outcome).copied().unwrap_or(default) / 100.0);
        let sink = sinks
            .get(&spec.path, spec.queue_size, scope.metrics())
            .map_err(|reason| ConfigError::new("path", reason))?;
        Ok(Self {
            request_keys: LineKeys::new(format.keys()),
            response_keys: LineKeys::new(format.response_keys()),
            format: Arc::new(format),
            sink,
            sampling,
            protocol,
            call_id_key,
            lines: scope.counter("access_log_lines", "Access log lines queued for writing"),
            dropped: scope.counter(
                "access_log_dropped",
                "Access log lines dropped because the writer fell behind",
            ),
        })
    }

    /// True if the lines show what the authorization filters decided, which they then record
    /// for each request ([`FilterContext::logs_authorization`](crate::FilterContext::logs_authorization)).
    pub fn shows_authorization(&self) -> bool {
        self.format.shows_authorization()
    }

    /// True if the lines name the rbac policy that refused a request, which the enforced
    /// authorization filters then record of the requests they refuse
    /// ([`FilterContext::logs_refusals`](crate::FilterContext::logs_refusals)).
    pub fn shows_refusals(&self) -> bool {
        self.format.shows_refusals()
    }

    /// What the router keeps of a request's attempts for these lines: why the last attempt's
    /// connection could not be made, and the connection it went on, each only if the lines
    /// show it.
    pub fn kept_by_router(&self) -> KeptForLog {
        KeptForLog {
            transport_failure: self.format.shows_transport_failure(),
            upstream_local_address: self.format.shows_upstream_local_address(),
        }
    }

    /// True if the lines show why the proxy closed a request's connection, which the requests
    /// that end once it decided to then record.
    pub fn shows_connection_termination(&self) -> bool {
        self.format.shows_connection_termination()
    }

    /// Logs a finished request, given the upstream's `response` it was answered with, if any,
    /// and its router, if it was routed (when its outcome is sampled).
    pub fn log(
        &self,
        request: &Message,
        response: Option<&Message>,
        record: &RequestRecord,
        routed: Option<&Routed>,
        outcome: RequestOutcome,
        trace_id: Option<u128>,
    ) {
        let share = self.sampling[outcome.index()];
        if share < 1.0 && fastrand::f64() >= share {
            return;
        }
        let capture = capture_from(request);
        let entry = || LogEntry {
            start_time: record.start_time,
            duration: record.timings.duration(),
            connection: record.connection.clone(),
            protocol: self.protocol,
            route: record.route.clone(),
            cluster: record.cluster.clone(),
            endpoint: record.endpoint,
            // Kept by the router only when the format shows it.
            upstream_local_address: routed.and_then(Routed::upstream_local_address),
            outcome,
            flags: record.outcome.flags,
            answered: record.outcome.status.is_some(),
            request_id: match self.call_id_key {
                None => RequestId::Number(request.request_id),
                Some(key) => request
                    .metadata
                    .get_shared(key)
                    .map_or(RequestId::None, |id| RequestId::Text(capture(id))),
            },
            trace_id,
            attempts: record.attempts,
            bytes_received: record.bytes_received,
            bytes_sent: record.bytes_sent,
            // Empty unless the format shows them: the filters and the router record them
            // only then.
            authorization: record.authorization().cloned().unwrap_or_default(),
            transport_failure: self
                .format
                .shows_transport_failure()
                .then(|| record.extensions.get::<TransportFailure>())
                .flatten()
                .map(|failure| Arc::clone(&failure.0)),
            connection_termination: self
                .format
                .shows_connection_termination()
                .then(|| record.extensions.get::<ConnectionTermination>().copied())
                .flatten(),
            metadata: self.request_keys.values(&request.metadata, capture),
            // Nothing to read unless the format reads the answer's keys.
            response_metadata: match response {
                Some(response) if !self.response_keys.keys.is_empty() => self
                    .response_keys
                    .values(&response.metadata, capture_from(response)),
                _ => SmallVec::new(),
            },
        };
        if self.sink.send(&self.format, entry) {
            self.lines.inc();
        } else {
            self.dropped.inc();
        }
    }
}

/// How a line keeps a value of `message`'s metadata: shared with its frame, unless the frame is
/// large (a large frame is not kept alive by its line: see `captured`) or the value long.
fn capture_from(message: &Message) -> impl Fn(ByteStr) -> ByteStr + Copy {
    let copy = message.frame.len() > SHARED_FRAME_BYTES;
    move |value: ByteStr| {
        if copy || value.len() > MAX_VALUE_BYTES {
            captured(&value)
        } else {
            value
        }
    }
}

/// The metadata keys a format reads of one side of a call (`%REQ(key)%` or `%RESP(key)%`), worked
/// out once for the lookups of every line.
///
/// A line shows each key spelt as the format spells it. A key the format writes with an
/// uppercase letter is an Envoy header name (a mesh's formats read `%REQ(X-REQUEST-ID)%` of calls
/// that carry `x-request-id`), found in any case when the message has none spelt so: its
/// lowercase spelling, which the codecs give their own keys, before any other. A key written in
/// lowercase is exact: Dubbo attachments and Thrift headers are case-sensitive maps, and a
/// client's attachment `Method` must not pass for the call's `method`.
#[derive(Debug)]
struct LineKeys {
    keys: Box<[LineKey]>,
    /// A bit for the length of each key read in any case (see [`length_bit`]): a name of
    /// another length is passed over without comparing it to the keys.
    any_case_lengths: u64,
}

/// A key a format reads, and, for a key read in any case, its lowercase spelling.
#[derive(Debug)]
struct LineKey {
    name: Box<str>,
    lowercase: Option<Box<str>>,
}

impl LineKeys {
    /// The lookups of `keys`.
    fn new(keys: &[String]) -> Self {
        let keys: Box<[LineKey]> = keys
            .iter()
            .map(|key| LineKey {
                lowercase: key
                    .bytes()
                    .any(|byte| byte.is_ascii_uppercase())
                    .then(|| key.to_ascii_lowercase().into()),
                name: key.as_str().into(),
            })
            .collect();
        let any_case_lengths = keys
            .iter()
            .filter(|key| key.lowercase.is_some())
            .fold(0, |lengths, key| lengths | length_bit(key.name.len()));
        Self {
            keys,
            any_case_lengths,
        }
    }

    /// The values of the keys in `metadata`, kept as `capture` keeps them. A key spelt as the
    /// format spells it, or in lowercase, is found through the metadata's index of its keys;
    /// only keys read in any case that are still lacking then are looked for among its names,
    /// all of them in one read of the names.
    fn values<A: smallvec::Array<Item = Option<ByteStr>>>(
        &self,
        metadata: &Metadata,
        capture: impl Fn(ByteStr) -> ByteStr,
    ) -> SmallVec<A> {
        let mut values: SmallVec<A> = self
            .keys
            .iter()
            .map(|key| {
                metadata
                    .get_shared(&key.name)
                    .or_else(|| metadata.get_shared(key.lowercase.as_deref()?))
            })
            .collect();
        if self.lacks_any_case_key(&values) {
            self.find_in_any_case(metadata, &mut values);
        }
        for value in &mut values {
            *value = value.take().map(&capture);
        }
        values
    }

    /// True if a key read in any case has no value in `values` yet.
    fn lacks_any_case_key(&self, values: &[Option<ByteStr>]) -> bool {
        self.keys
            .iter()
            .zip(values)
            .any(|(key, value)| key.lowercase.is_some() && value.is_none())
    }

    /// Gives each key read in any case that has no value in `values` the value of the first
    /// name of `metadata` equal to it in any case.
    fn find_in_any_case(&self, metadata: &Metadata, values: &mut [Option<ByteStr>]) {
        for (name, _) in metadata.iter() {
            #[cfg(test)]
            tests::NAMES_READ.set(tests::NAMES_READ.get() + 1);
            if self.any_case_lengths & length_bit(name.len()) == 0 {
                continue;
            }
            for (key, value) in self.keys.iter().zip(values.iter_mut()) {
                if value.is_none()
                    && key.lowercase.is_some()
                    && name.eq_ignore_ascii_case(&key.name)
                {
                    *value = metadata.get_shared(name);
                }
            }
        }
    }
}

/// The bit of [`LineKeys::any_case_lengths`] that stands for a key of `len` bytes (the last
/// one for every length from 63 on).
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

/// A frame larger than this is not kept alive by its line while the line waits for the writer:
/// the values the line needs are copied out of it.
const SHARED_FRAME_BYTES: usize = 4 * 1024;
/// The longest metadata value a line keeps: longer ones are cut (the format's `:N` cuts
/// shorter).
const MAX_VALUE_BYTES: usize = 1024;

/// A copy of `value` for a line, cut to [`MAX_VALUE_BYTES`]: a line shares a small frame's
/// storage, but copies out of a large one, so that a queue of lines waiting for a slow disk
/// holds little more than the lines.
#[cold]
fn captured(value: &ByteStr) -> ByteStr {
    ByteStr::copy_from_str(crate::text::cut(value.as_str(), MAX_VALUE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata holding `entries`, in order.
    fn metadata(entries: &[(&'static str, &'static str)]) -> Metadata {
        let mut metadata = Metadata::new();
        for &(key, value) in entries {
            assert!(metadata.insert(key, value));
        }
        metadata
    }

    /// The values a line of a format reading `keys` shows of `metadata`.
    fn values(metadata: &Metadata, keys: &[&str]) -> SmallVec<[Option<ByteStr>; 4]> {
        let keys: Vec<String> = keys.iter().map(|&key| key.to_owned()).collect();
        LineKeys::new(&keys).values(metadata, |value| value)
    }

    /// The value a line of a format reading `key` shows of `metadata`.
    fn shown(metadata: &Metadata, key: &str) -> Option<String> {
        values(metadata, &[key])[0]
            .as_ref()
            .map(ToString::to_string)
    }

    /// Dubbo attachments and Thrift headers are case-sensitive: an attachment `Method` is not the
    /// call's `method`, which `%REQ(method)%` shows; and Envoy's header-style keys, which match
    /// in any case, read the codec's own lowercase key before a client's key spelt otherwise.
    #[test]
    fn a_clients_key_in_another_case_is_not_shown_as_the_calls_own() {
        let spoofing = metadata(&[("Method", "deleteAll"), ("Service", "Admin")]);
        assert_eq!(
            (shown(&spoofing, "method"), shown(&spoofing, "service")),
            (None, None),
            "a client's attachments were shown as the call's method and service"
        );
        // A THeader's headers come before the call's method in its frame.
        let header_first = metadata(&[("Method", "deleteAll"), ("method", "sayHello")]);
        assert_eq!(
            shown(&header_first, "METHOD").as_deref(),
            Some("sayHello"),
            "the client's `Method` was shown for %REQ(METHOD)% of a call whose method is sayHello"
        );
        // Istio's keys still find a call's headers in any case.
        for spelt in ["x-request-id", "X-Request-Id", "X-REQUEST-ID"] {
            let carried = metadata(&[("tenant", "t"), (spelt, "r-1")]);
            assert_eq!(
                shown(&carried, "X-REQUEST-ID").as_deref(),
                Some("r-1"),
                "{spelt}"
            );
        }
        let exact = metadata(&[("x-request-id", "lower"), ("X-REQUEST-ID", "upper")]);
        assert_eq!(shown(&exact, "X-REQUEST-ID").as_deref(), Some("upper"));
        assert_eq!(shown(&exact, "x-request-id").as_deref(), Some("lower"));
    }

    thread_local! {
        /// The metadata names read on this thread by the searches for keys in any case.
        pub(super) static NAMES_READ: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The keys Istio's default format reads of a request (`%REQ(...)%`), none of which a Dubbo
    /// or Thrift call carries.
    const ISTIO_KEYS: [&str; 7] = [
        ":METHOD",
        "X-ENVOY-ORIGINAL-PATH",
        ":PATH",
        "X-FORWARDED-FOR",
        "USER-AGENT",
        "X-REQUEST-ID",
        ":AUTHORITY",
    ];

    /// The names of `metadata` read to find `keys` of a format.
    fn names_read(metadata: &Metadata, keys: &[&str]) -> usize {
        NAMES_READ.set(0);
        values(metadata, keys);
        NAMES_READ.get()
    }

    /// A line of Istio's format of a call that lacks its keys reads the call's metadata names
    /// once, not once a key; a lowercase key the call lacks reads none.
    #[test]
    fn keys_a_call_lacks_cost_one_read_of_its_names() {
        let call = metadata(&[
            ("path", "org.demo.Hello"),
            ("version", "1.0.0"),
            ("method", "sayHello"),
            ("service", "org.demo.Hello"),
            ("interface", "org.demo.Hello"),
            ("group", "blue"),
            ("timeout", "3000"),
            ("tenant", "t"),
        ]);
        assert_eq!(
            names_read(&call, &ISTIO_KEYS),
            call.len(),
            "names read for Istio's keys of a call of {} entries",
            call.len()
        );
        assert_eq!(names_read(&call, &["tenant-id", "x-b3-traceid"]), 0);
        // Keys the call carries in some case are found, in that same one read.
        let carrying = metadata(&[
            ("method", "sayHello"),
            ("x-request-id", "r-1"),
            ("User-Agent", "dubbo-go"),
            ("X-Forwarded-For", "10.0.0.1"),
        ]);
        NAMES_READ.set(0);
        let shown: Vec<Option<String>> = values(&carrying, &ISTIO_KEYS)
            .iter()
            .map(|value| value.as_ref().map(ToString::to_string))
            .collect();
        assert_eq!(NAMES_READ.get(), carrying.len());
        let found = |value: &str| Some(value.to_owned());
        assert_eq!(
            shown,
            [
                None,
                None,
                None,
                found("10.0.0.1"),
                found("dubbo-go"),
                found("r-1"),
                None
            ]
        );
    }
}
