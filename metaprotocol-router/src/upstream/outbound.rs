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

    /// Delivers the answer through `batch`: an answer for a downstream connection waits there
    /// until the batch is flushed or an answer for another connection comes. False when its
    /// waiter is known to have gone (a client call that gave up): the answer matched nobody.
    #[must_use]
    pub fn answer_in(mut self, batch: &mut AnswerBatch, result: AttemptResult) -> bool {
        match self.0.take() {
            Some(Waiter::Inbox {
                inbox,
                key,
                attempt,
            }) => {
                batch.push(
                    inbox,
                    UpstreamEvent {
                        key,
                        attempt,
                        result,
                    },
                );
                true
            }
            Some(waiter) => deliver(waiter, result),
            None => true,
        }
    }
}

/// An answer batch with room for more than this many gives it back once flushed (a read of
/// many small answers made it), rather than keep it while its connection idles.
const KEPT_ANSWERS: usize = 256;

/// Answers bound for one downstream connection, gathered while an upstream connection handles
/// the responses of one read: they go into the connection's queue under one lock, and wake it
/// once. Responses come back in the order their requests were written, and a client
/// connection's requests are written together, so consecutive answers mostly go to one
/// connection. Dropped, it delivers what it holds.
#[derive(Debug, Default)]
pub(crate) struct AnswerBatch {
    inbox: Option<Inbox>,
    events: Vec<UpstreamEvent>,
    /// Answers dropped since [`AnswerBatch::take_undelivered`]: their client connection had
    /// closed its queue (it is gone), so they matched no request waiting.
    undelivered: u64,
}

impl AnswerBatch {
    fn push(&mut self, inbox: Inbox, event: UpstreamEvent) {
        if !self
            .inbox
            .as_ref()
            .is_some_and(|held| held.same_queue(&inbox))
        {
            self.flush();
            self.inbox = Some(inbox);
        }
        self.events.push(event);
    }

    /// Delivers the answers held.
    pub fn flush(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            self.undelivered += inbox.send_all(&mut self.events) as u64;
            if self.events.capacity() > KEPT_ANSWERS {
                self.events = Vec::new();
            }
        }
    }

    /// The answers dropped since the last call because their client connection had gone
    /// (closed its queue of answers), to count with those that matched no request.
    pub fn take_undelivered(&mut self) -> u64 {
        std::mem::take(&mut self.undelivered)
    }
}

impl Drop for AnswerBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(waiter) = self.0.take() {
            deliver(waiter, Err(UpstreamError::Reset { sent: true }));
        }
    }
}

/// Delivers `result` to `waiter`; false if the waiter is known to have gone (a client call that
/// gave up).
fn deliver(waiter: Waiter, result: AttemptResult) -> bool {
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
            true
        }
        Waiter::Oneshot(sender) => sender.send(result).is_ok(),
        Waiter::Discard(discard) => {
            let ended = if result.is_ok() {
                &discard.answered
            } else {
                &discard.failed
            };
            ended.inc();
            true
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
    /// Whether the server is told what is left of `deadline` when the request is written
    /// ([`metaprotocol_core::Codec::encode_within`]): the deadline is not its caller's own.
    pub tells_deadline: bool,
    pub reply: ReplyTo,
    /// Whether it holds a place under its cluster's `max_pending_requests` (when the cluster
    /// sets one, [`crate::cluster::PendingPlace::hand_over`]): given back through the cluster's
    /// breakers when it leaves its connection's queue, or by its pool when refused.
    pub placed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waiting;

    fn answer(reply: ReplyTo, batch: &mut AnswerBatch, request_id: u64) {
        let mut message = Message::empty();
        message.request_id = request_id;
        assert!(reply.answer_in(batch, Ok(Box::new(message))));
    }

    fn drain(rx: &mut waiting::Receiver<UpstreamEvent>) -> Vec<(u32, u64)> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|event| {
                let id = event.result.map_or(0, |message| message.request_id);
                (event.key.index, id)
            })
            .collect()
    }

    #[test]
    fn a_batch_delivers_each_connections_answers_in_order_when_flushed_or_dropped() {
        let (first, mut first_rx) = waiting::queue();
        let (second, mut second_rx) = waiting::queue();
        let key = |index| RequestKey { index, seq: 0 };
        let mut batch = AnswerBatch::default();
        answer(ReplyTo::inbox(first.clone(), key(1), 0), &mut batch, 11);
        answer(ReplyTo::inbox(first.clone(), key(2), 0), &mut batch, 12);
        assert!(
            drain(&mut first_rx).is_empty(),
            "held until another connection's answer"
        );
        answer(ReplyTo::inbox(second.clone(), key(3), 0), &mut batch, 13);
        assert_eq!(drain(&mut first_rx), [(1, 11), (2, 12)]);
        answer(ReplyTo::inbox(first.clone(), key(4), 0), &mut batch, 14);
        batch.flush();
        assert_eq!(drain(&mut second_rx), [(3, 13)]);
        answer(ReplyTo::inbox(second.clone(), key(5), 0), &mut batch, 15);
        drop(batch);
        assert_eq!(drain(&mut first_rx), [(4, 14)]);
        assert_eq!(drain(&mut second_rx), [(5, 15)]);
    }

    #[test]
    fn a_batch_answers_other_waiters_at_once_and_drops_answers_to_a_closed_queue() {
        let (closed, closed_rx) = waiting::queue();
        drop(closed_rx);
        let (sender, mut receiver) = oneshot::channel();
        let mut batch = AnswerBatch::default();
        let key = RequestKey { index: 0, seq: 0 };
        answer(ReplyTo::inbox(closed, key, 0), &mut batch, 1);
        answer(ReplyTo::oneshot(sender), &mut batch, 2);
        assert!(matches!(receiver.try_recv(), Ok(Ok(message)) if message.request_id == 2));
        batch.flush();
        assert!(
            batch.events.is_empty(),
            "nothing held for a queue that is gone"
        );
    }
}
