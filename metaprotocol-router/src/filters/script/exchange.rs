//! The exchange between a hook and its script: what the script may read, and what it asked for.
//!
//! One exchange lives in each script instance and is reused for every hook that instance runs:
//! `begin_*` fills it from the hook's context, the script calls the operations below, and
//! `end_*` applies its requests to the context and empties it again. Operations a hook does not
//! allow (editing headers in `on_complete`, a routing key on a response) and operations outside
//! any hook (a script that kept its handle) are errors the script sees.
//!
//! What a script hands the host is bounded per hook run ([`Limit`]): past [`MAX_ENTRIES`]
//! headers, routing keys or state values, or [`MAX_WRITTEN_BYTES`] of keys and values, an
//! operation fails and so does the hook, even if the script catches the error. A host-side
//! edit scans the edits made so far, so without a bound one hook's loop held as much memory,
//! for as long (quadratic in the edits), as its instruction budget allowed: minutes of a worker.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metaprotocol_core::{
    ByteStr, CompleteContext, LocalReply, LocalReplyKind, Metadata, Mutation, Outcome,
    RequestContext, RequestRecord, ResponseContext, ResponseStatus, RoutingKeys,
};

use super::{ScriptState, StateValue};

/// The most headers (set or removed), routing keys, and state values a script may have the host
/// hold (each): as many as a message may carry.
pub(crate) const MAX_ENTRIES: usize = metaprotocol_core::MAX_METADATA_ENTRIES;

/// The most bytes of keys, values and reply texts a script may hand the host in one hook run,
/// counting every operation (a value set twice counts twice): far above what a filter's edits
/// need, far below what a runaway loop could make the proxy hold.
pub(crate) const MAX_WRITTEN_BYTES: usize = 1 << 20;

/// A bound on what a script may hand the host in one hook run (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// [`MAX_ENTRIES`] headers set or removed.
    Headers,
    /// [`MAX_ENTRIES`] routing keys.
    RoutingKeys,
    /// [`MAX_ENTRIES`] state values.
    State,
    /// [`MAX_WRITTEN_BYTES`].
    Bytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Headers => write!(f, "a hook may set or remove at most {MAX_ENTRIES} headers"),
            Limit::RoutingKeys => write!(f, "a hook may set at most {MAX_ENTRIES} routing keys"),
            Limit::State => write!(f, "a request may keep at most {MAX_ENTRIES} state values"),
            Limit::Bytes => write!(
                f,
                "a hook may hand the proxy at most {MAX_WRITTEN_BYTES} bytes of keys and values"
            ),
        }
    }
}

/// The hook a script runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// `on_request`: before routing.
    Request,
    /// `on_response`: before the upstream response goes to the client.
    Response,
    /// `on_complete`: after the answer, read-only.
    Complete,
}

impl Hook {
    /// The hook's name, as scripts define it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Request => "on_request",
            Hook::Response => "on_response",
            Hook::Complete => "on_complete",
        }
    }
}

/// An operation the script may not do where it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpError {
    /// No hook is running: the script used its handle after the hook returned.
    Outside,
    /// `op` is not available in this hook.
    NotInHook { op: &'static str, hook: Hook },
    /// A key or value is not valid UTF-8.
    NotUtf8,
    /// An unknown local reply kind.
    UnknownKind(String),
    /// The hook has handed the host all it may ([`Limit`]).
    Limit(Limit),
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Outside => f.write_str("the message is used outside the hook it was given to"),
            OpError::NotInHook { op, hook } => {
                write!(f, "{op} is not available in {}", hook.name())
            }
            OpError::NotUtf8 => f.write_str("keys and values must be valid UTF-8"),
            OpError::UnknownKind(kind) => {
                let err = kind.parse::<LocalReplyKind>().err();
                match err {
                    Some(err) => write!(f, "{err}"),
                    None => write!(f, "unknown local reply kind `{kind}`"),
                }
            }
            OpError::Limit(limit) => limit.fmt(f),
        }
    }
}

impl std::error::Error for OpError {}

/// The request's record, as scripts read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Facts {
    /// The listener the request came in on.
    pub listener: Option<Arc<str>>,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The matched route (after routing).
    pub route: Option<Arc<str>>,
    /// The chosen cluster (after routing).
    pub cluster: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts made.
    pub attempts: u32,
    /// How it ended (final in `on_complete`).
    pub outcome: Outcome,
    /// Receipt to answer (in `on_complete`).
    pub duration: Option<Duration>,
    /// The request frame's size.
    pub bytes_received: u64,
    /// The answer's size (in `on_complete`).
    pub bytes_sent: u64,
}

impl Facts {
    fn of(record: &RequestRecord) -> Self {
        Self {
            listener: Some(record.connection.listener.clone()),
            peer: Some(record.connection.peer_addr),
            route: record.route.clone(),
            cluster: record.cluster.clone(),
            endpoint: record.endpoint,
            attempts: record.attempts,
            outcome: record.outcome,
            duration: record.timings.duration(),
            bytes_received: record.bytes_received,
            bytes_sent: record.bytes_sent,
        }
    }
}

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    hook: Option<Hook>,
    /// The hook's message: the request, or the response in `on_response`.
    metadata: Metadata,
    /// The request's metadata in `on_response` (the other hooks read `metadata`).
    request: Metadata,
    facts: Facts,
    mutation: Mutation,
    routing_keys: RoutingKeys,
    state: Option<ScriptState>,
    reply: Option<LocalReply>,
    /// Bytes of keys and values the hook has handed over ([`MAX_WRITTEN_BYTES`]).
    written: usize,
    /// The bound the hook ran into, if any: the hook fails even if the script caught the error.
    exceeded: Option<Limit>,
}

impl Exchange {
    /// Starts `on_request`.
    pub fn begin_request(&mut self, ctx: &mut RequestContext<'_>) {
        self.begin(Hook::Request, &ctx.request.metadata, ctx.record);
        self.state = ctx.record.extensions.remove::<ScriptState>();
    }

    /// Ends `on_request`: applies the script's edits; the local reply it asked for, if any.
    pub fn end_request(&mut self, ctx: &mut RequestContext<'_>) -> Option<LocalReply> {
        ctx.mutation.extend(&self.mutation);
        ctx.record
            .extend_routing_keys(std::mem::take(&mut self.routing_keys));
        self.end(ctx.record)
    }

    /// Starts `on_response`.
    pub fn begin_response(&mut self, ctx: &mut ResponseContext<'_>) {
        self.begin(Hook::Response, &ctx.response.metadata, ctx.record);
        self.request = ctx.request.metadata.clone();
        self.state = ctx.record.extensions.remove::<ScriptState>();
    }

    /// Ends `on_response`, as [`Exchange::end_request`].
    pub fn end_response(&mut self, ctx: &mut ResponseContext<'_>) -> Option<LocalReply> {
        ctx.mutation.extend(&self.mutation);
        self.request = Metadata::new();
        self.end(ctx.record)
    }

    /// Starts `on_complete`.
    pub fn begin_complete(&mut self, ctx: &CompleteContext<'_>) {
        self.begin(Hook::Complete, &ctx.request.metadata, ctx.record);
        self.state = ctx.record.extensions.get::<ScriptState>().cloned();
    }

    /// Ends `on_complete`.
    pub fn end_complete(&mut self) {
        self.hook = None;
        self.clear();
    }

    fn begin(&mut self, hook: Hook, metadata: &Metadata, record: &RequestRecord) {
        self.hook = Some(hook);
        self.metadata = metadata.clone();
        self.facts = Facts::of(record);
    }

    fn end(&mut self, record: &mut RequestRecord) -> Option<LocalReply> {
        self.hook = None;
        if let Some(state) = self.state.take().filter(|s| !s.is_empty()) {
            record.extensions.insert(state);
        }
        let reply = self.reply.take();
        self.clear();
        reply
    }

    /// Lets go of everything the hook lent (the frame's buffers) and empties the edits.
    fn clear(&mut self) {
        self.metadata = Metadata::new();
        self.facts = Facts::default();
        self.mutation = Mutation::new();
        self.routing_keys = RoutingKeys::new();
        self.state = None;
        self.reply = None;
        self.written = 0;
        self.exceeded = None;
    }

    /// The bound the running hook ran into, if any (read before `end_*` empties the exchange).
    pub fn exceeded(&self) -> Option<Limit> {
        self.exceeded
    }

    /// Fails with `limit` if `over`, and remembers that the hook did.
    fn bound(&mut self, over: bool, limit: Limit) -> Result<(), OpError> {
        if over {
            self.exceeded = Some(limit);
            return Err(OpError::Limit(limit));
        }
        Ok(())
    }

    /// Counts `bytes` handed over by an operation allowed in the hook (`check`ed first), before
    /// the host copies them.
    fn take_bytes(&mut self, bytes: usize) -> Result<(), OpError> {
        self.written = self.written.saturating_add(bytes);
        self.bound(self.written > MAX_WRITTEN_BYTES, Limit::Bytes)
    }

    /// The hook running, if `op` is allowed in it (`allowed`).
    fn check(&self, op: &'static str, allowed: &[Hook]) -> Result<Hook, OpError> {
        let hook = self.hook.ok_or(OpError::Outside)?;
        if allowed.contains(&hook) {
            Ok(hook)
        } else {
            Err(OpError::NotInHook { op, hook })
        }
    }

    /// The hook running.
    pub fn hook(&self) -> Result<Hook, OpError> {
        self.hook.ok_or(OpError::Outside)
    }

    /// The value of `key` in the hook's message (the response in `on_response`, else the
    /// request).
    pub fn get(&self, key: &[u8]) -> Result<Option<&str>, OpError> {
        self.hook()?;
        Ok(self.metadata.get_bytes(key))
    }

    /// The value of `key` in the request.
    pub fn request_get(&self, key: &[u8]) -> Result<Option<&str>, OpError> {
        let metadata = match self.hook()? {
            Hook::Response => &self.request,
            Hook::Request | Hook::Complete => &self.metadata,
        };
        Ok(metadata.get_bytes(key))
    }

    /// Sets header `key` of the message the hook forwards (the upstream request, or the client
    /// response).
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.check("set", &[Hook::Request, Hook::Response])?;
        self.take_bytes(key.len() + value.len())?;
        // Only at the bound is it worth a scan: replacing a header set already adds nothing.
        let full = entries(&self.mutation) >= MAX_ENTRIES
            && !self
                .mutation
                .sets()
                .iter()
                .any(|(k, _)| k.as_bytes() == key);
        self.bound(full, Limit::Headers)?;
        self.mutation.set(text(key)?, text(value)?);
        Ok(())
    }

    /// Removes header `key` of the message the hook forwards.
    pub fn remove(&mut self, key: &[u8]) -> Result<(), OpError> {
        self.check("remove", &[Hook::Request, Hook::Response])?;
        self.take_bytes(key.len())?;
        let full = entries(&self.mutation) >= MAX_ENTRIES
            && !self.mutation.removals().iter().any(|k| k.as_bytes() == key);
        self.bound(full, Limit::Headers)?;
        self.mutation.remove(text(key)?);
        Ok(())
    }

    /// Sets a routing key: the route match sees `value` for `key`.
    pub fn set_routing_key(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.check("set_routing_key", &[Hook::Request])?;
        self.take_bytes(key.len() + value.len())?;
        let key = text(key)?;
        let full = self.routing_keys.iter().count() >= MAX_ENTRIES
            && self.routing_keys.get(key.as_str()).is_none();
        self.bound(full, Limit::RoutingKeys)?;
        self.routing_keys.set(key, text(value)?);
        Ok(())
    }

    /// The request's state value `key`.
    pub fn state(&self, key: &[u8]) -> Result<Option<&StateValue>, OpError> {
        self.hook()?;
        Ok(self.state.as_ref().and_then(|state| state.get(key)))
    }

    /// Sets (or, with `None`, removes) the request's state value `key`.
    pub fn set_state(&mut self, key: &[u8], value: Option<StateValue>) -> Result<(), OpError> {
        self.check("set_state", &[Hook::Request, Hook::Response])?;
        let value_len = match &value {
            Some(StateValue::Str(s)) => s.len(),
            Some(_) => std::mem::size_of::<StateValue>(),
            None => 0,
        };
        self.take_bytes(key.len() + value_len)?;
        // The bound is on the request's whole state, which every script filter of the chain
        // adds to, so that it stays bounded however many hooks run.
        let full = value.is_some()
            && (self.state.as_ref())
                .is_some_and(|state| state.len() >= MAX_ENTRIES && state.get(key).is_none());
        self.bound(full, Limit::State)?;
        let key = text(key)?;
        self.state.get_or_insert_default().set(key, value);
        Ok(())
    }

    /// Answers the request with a local reply of `kind` (a config name such as `unauthorized`)
    /// instead of going on.
    pub fn reply(&mut self, kind: &[u8], message: &[u8]) -> Result<(), OpError> {
        self.check("reply", &[Hook::Request, Hook::Response])?;
        self.take_bytes(kind.len() + message.len())?;
        let kind_text = std::str::from_utf8(kind).map_err(|_| OpError::NotUtf8)?;
        let kind = kind_text
            .parse::<LocalReplyKind>()
            .map_err(|_| OpError::UnknownKind(kind_text.to_owned()))?;
        let message = String::from_utf8(message.to_vec()).map_err(|_| OpError::NotUtf8)?;
        self.reply = Some(LocalReply::new(kind, message));
        Ok(())
    }

    /// The request's record.
    pub fn facts(&self) -> Result<&Facts, OpError> {
        self.hook()?;
        Ok(&self.facts)
    }
}

/// A response status as scripts see it.
pub(crate) fn status_name(status: ResponseStatus) -> &'static str {
    match status {
        ResponseStatus::Ok => "ok",
        ResponseStatus::ApplicationError => "application_error",
        ResponseStatus::ServerError => "server_error",
    }
}

/// The headers `mutation` sets or removes.
fn entries(mutation: &Mutation) -> usize {
    mutation.sets().len() + mutation.removals().len()
}

/// A script's bytes as a key or value.
fn text(bytes: &[u8]) -> Result<ByteStr, OpError> {
    ByteStr::from_utf8(Bytes::copy_from_slice(bytes)).map_err(|_| OpError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::script::testing::{assert_fast_lane_and_seen, record};

    fn request() -> metaprotocol_core::Message {
        crate::filters::script::testing::request(&[("tenant", "t1")])
    }

    /// What a request hook of `exchange` that ran `hook` left: the mutation, the record and the
    /// reply.
    type Ended = (Mutation, RequestRecord, Option<LocalReply>);

    /// Runs `hook` as a request hook of `exchange` over [`request`], with a fresh mutation and
    /// record.
    fn request_hook(
        exchange: &mut Exchange,
        hook: impl FnOnce(&mut Exchange) -> Result<(), OpError>,
    ) -> Result<Ended, OpError> {
        let request = request();
        let (mut mutation, mut record) = (Mutation::new(), record());
        let mut ctx = RequestContext {
            request: &request,
            mutation: &mut mutation,
            record: &mut record,
        };
        exchange.begin_request(&mut ctx);
        hook(exchange)?;
        let reply = exchange.end_request(&mut ctx);
        Ok((mutation, record, reply))
    }

    #[test]
    fn a_request_hook_reads_edits_and_replies() -> Result<(), OpError> {
        let mut exchange = Exchange::default();
        let (mutation, record, reply) = request_hook(&mut exchange, |exchange| {
            assert_eq!(exchange.get(b"tenant")?, Some("t1"));
            assert_eq!(exchange.facts()?.listener.as_deref(), Some("in"));
            exchange.set(b"x-a", b"1")?;
            exchange.remove(b"debug")?;
            exchange.set_routing_key(b"lane", b"fast")?;
            exchange.set_state(b"seen", Some(StateValue::Int(7)))?;
            assert_eq!(
                exchange.reply(b"nope", b"x"),
                Err(OpError::UnknownKind("nope".into()))
            );
            exchange.reply(b"unauthorized", b"go away")
        })?;
        assert_eq!(reply.map(|r| r.kind), Some(LocalReplyKind::Unauthorized));
        assert!(mutation.overrides(b"x-a") && mutation.drops(b"debug"));
        assert_fast_lane_and_seen(&record, &StateValue::Int(7));
        assert_eq!(exchange.get(b"tenant"), Err(OpError::Outside));
        Ok(())
    }

    #[test]
    fn what_a_hook_hands_the_host_is_bounded() -> Result<(), OpError> {
        let mut exchange = Exchange::default();
        let (mutation, _, _) = request_hook(&mut exchange, |exchange| {
            for n in 0..MAX_ENTRIES {
                let key = format!("k{n}");
                exchange.set(key.as_bytes(), b"v")?;
                exchange.set_routing_key(key.as_bytes(), b"v")?;
                exchange.set_state(key.as_bytes(), Some(StateValue::Int(1)))?;
            }
            // At the bound, what replaces or removes an entry still goes.
            exchange.set(b"k0", b"w")?;
            exchange.set_routing_key(b"k0", b"w")?;
            exchange.set_state(b"k0", None)?;
            exchange.set_state(b"k-new", Some(StateValue::Bool(true)))?;
            assert_eq!(exchange.exceeded(), None);
            let more = b"one-more";
            assert_eq!(
                exchange.set(more, b"v"),
                Err(OpError::Limit(Limit::Headers))
            );
            assert_eq!(exchange.remove(more), Err(OpError::Limit(Limit::Headers)));
            assert_eq!(
                exchange.set_routing_key(more, b"v"),
                Err(OpError::Limit(Limit::RoutingKeys))
            );
            let value = Some(StateValue::Int(1));
            assert_eq!(
                exchange.set_state(more, value),
                Err(OpError::Limit(Limit::State))
            );
            assert_eq!(exchange.exceeded(), Some(Limit::State));
            Ok(())
        })?;
        assert_eq!(mutation.sets().len(), MAX_ENTRIES);

        // Bytes count over the whole hook, a value set again included; a new hook starts anew.
        request_hook(&mut exchange, |exchange| {
            assert_eq!(exchange.exceeded(), None);
            let value = vec![b'v'; 64 << 10];
            for _ in 0..MAX_WRITTEN_BYTES / (b"big".len() + value.len()) {
                exchange.set(b"big", &value)?;
            }
            assert_eq!(
                exchange.set(b"big", &value),
                Err(OpError::Limit(Limit::Bytes))
            );
            assert_eq!(
                exchange.reply(b"internal", &value),
                Err(OpError::Limit(Limit::Bytes))
            );
            assert_eq!(exchange.exceeded(), Some(Limit::Bytes));
            Ok(())
        })?;
        Ok(())
    }

    #[test]
    fn completion_is_read_only() {
        let request = request();
        let record = record();
        let mut exchange = Exchange::default();
        exchange.begin_complete(&CompleteContext {
            request: &request,
            response: None,
            record: &record,
        });
        assert_eq!(
            exchange.set(b"k", b"v"),
            Err(OpError::NotInHook {
                op: "set",
                hook: Hook::Complete
            })
        );
        assert!(exchange.set_routing_key(b"k", b"v").is_err());
        assert!(exchange.reply(b"internal", b"x").is_err());
        assert_eq!(exchange.request_get(b"tenant").ok().flatten(), Some("t1"));
        exchange.end_complete();
        assert!(exchange.facts().is_err());
    }
}
