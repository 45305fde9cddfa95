//! What travels to an upstream connection (a request and who waits for its answer) and what
//! comes back.

use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::UpstreamError;
use crate::cluster::ActiveRequest;
use crate::stats::Counter;
use crate::waiting;

/// A request in flight on a downstream connection: its slot and the sequence number that tells
/// a reused slot's new request from the old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestKey {
    pub index: u32,
    pub seq: u32,
}

/// How one attempt ended: the upstream's response, or why there is none. The response is boxed
/// where it is decoded, so that it travels to its waiter (through the answer queue, the
/// router's stages) as a pointer: a `Message` is over 400 bytes, and each move of one is a copy
/// (eight copies of each answer on its way to the client connection when it travelled by value).
pub(crate) type AttemptResult = Result<Box<Message>, UpstreamError>;

/// The answer to one attempt, delivered to the downstream connection that made it.
#[derive(Debug)]
pub(crate) struct UpstreamEvent {
    pub key: RequestKey,
    pub attempt: u32,
    pub result: AttemptResult,
}

/// A downstream connection's queue of attempt answers.
pub(crate) type Inbox = waiting::Sender<UpstreamEvent>;

/// Who waits for an answer.
#[derive(Debug)]
enum Waiter {
    /// A downstream connection, for one attempt of one of its requests.
    Inbox {
        inbox: Inbox,
        key: RequestKey,
        attempt: u32,
    },
    /// A caller of the client API.
    Oneshot(oneshot::Sender<AttemptResult>),
    /// Nobody: the answer is counted and dropped (a mirrored copy).
    Discard(Discard),
}

/// The waiter of a request whose answer nobody reads (a mirrored copy): it counts how the
/// request ended, once, and releases what it holds when it does: the attempt's in-flight
/// counts, and its `slot` in a budget of such requests.
#[derive(Debug)]
pub(crate) struct Discard {
    /// Counted when an answer arrives.
    pub answered: Counter,
    /// Counted when the request ends without one (reset, refused, too late).
    pub failed: Counter,
    /// Decremented when the request ends.
    pub slot: Gauge,
    /// The attempt's in-flight counts, held until the request ends.
    pub _active: ActiveRequest,
}

impl Drop for Discard {
    fn drop(&mut self) {
        self.slot.dec();
    }
}

/// Where the answer to a request goes: nowhere for one-way requests. Every two-way request is
/// answered exactly once: dropped unanswered (a connection task that ended abnormally), it
/// answers "reset, possibly sent" itself.
#[derive(Debug)]
pub(crate) struct ReplyTo(Option<Waiter>);

impl ReplyTo {
    /// One-way: no answer expected.
    pub fn none() -> Self {
        Self(None)
    }

    /// Attempt `attempt` of the downstream request `key`, answered into `inbox`.
    pub fn inbox(inbox: Inbox, key: RequestKey, attempt: u32) -> Self {
        Self(Some(Waiter::Inbox {
            inbox,
            key,
            attempt,
        }))
    }

    /// A client call, answered through `sender`.
    pub fn oneshot(sender: oneshot::Sender<AttemptResult>) -> Self {
        Self(Some(Waiter::Oneshot(sender)))
    }

    /// A two-way request whose answer is counted and dropped.
    pub fn discard(discard: Discard) -> Self {
        Self(Some(Waiter::Discard(discard)))
    }

    /// True for two-way requests.
    pub fn expects_answer(&self) -> bool {
        self.0.is_some()
    }

    /// True if nobody waits any more (a client call whose caller gave up).
    pub fn is_abandoned(&self) -> bool {
        match &self.0 {
            Some(Waiter::Oneshot(sender)) => sender.is_closed(),
            Some(Waiter::Inbox { inbox, .. }) => inbox.is_closed(),
            Some(Waiter::Discard(_)) | None => false,
        }
    }

    /// Forgets the waiter without answering: for a caller that handles the failure itself, or
    /// one known to have given up. A discarding waiter counts the request as failed.
    pub fn disarm(&mut self) {
        if let Some(Waiter::Discard(discard)) = self.0.take() {
            discard.failed.inc();
        }
    }

    /// Delivers the answer; waiters that went away are ignored.
    pub fn answer(mut self, result: AttemptResult) {
        if let Some(waiter) = self.0.take() {
            deliver(waiter, result);
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(waiter) = self.0.take() {
            deliver(waiter, Err(UpstreamError::Reset { sent: true }));
        }
    }
}

fn deliver(waiter: Waiter, result: AttemptResult) {
    match waiter {
        Waiter::Inbox {
            inbox,
            key,
            attempt,
        } => {
            let _ = inbox.send(UpstreamEvent {
                key,
                attempt,
                result,
            });
        }
        Waiter::Oneshot(sender) => {
            let _ = sender.send(result);
        }
        Waiter::Discard(discard) => {
            let ended = if result.is_ok() {
                &discard.answered
            } else {
                &discard.failed
            };
            ended.inc();
        }
    }
}

/// A request for an upstream connection to write.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub message: Arc<Message>,
    pub mutation: Arc<Mutation>,
    /// After this the request is not worth writing any more: its caller has given up.
    pub deadline: Instant,
    pub reply: ReplyTo,
}
