//! Allocations for upstream answers, kept per thread for reuse.
//!
//! An answer is boxed where its connection decodes it (see [`AttemptResult`](super::AttemptResult))
//! and dropped by the client connection that forwards it, on the same worker thread but in
//! another task, tens at a time. Handed back to the allocator, those boxes overflow its
//! per-thread cache (seven blocks of a size in glibc) and every answer pays for the allocator's
//! slow path, more than the copies the box saves (callgrind, Thrift 8 x 64: about 280
//! instructions a call); kept here, an answer costs no allocation once the thread has served a
//! batch.

use std::cell::RefCell;

use bytes::Bytes;
use metaprotocol_core::{Message, MessageKind};

/// Boxes a thread keeps: a few batches of answers (each box about 440 bytes, at most about
/// 220 KB a thread).
const SPARE_ANSWERS: usize = 512;

thread_local! {
    // The boxes themselves are what is kept: each goes back out as an answer's allocation.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Message>>> = const { RefCell::new(Vec::new()) };
}

/// A box for the codec to decode the next answer into ([`Codec::decode_into`]): one this
/// thread kept when it has one.
///
/// [`Codec::decode_into`]: metaprotocol_core::Codec::decode_into
#[inline(always)]
pub(crate) fn slot() -> Box<Message> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Box::new(Message::empty()))
}

/// Keeps `answer`'s box for a next answer on this thread (while it keeps fewer than
/// [`SPARE_ANSWERS`]); what the answer holds (its frame and the read buffer under it) goes now.
pub(crate) fn recycle(mut answer: Box<Message>) {
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_ANSWERS {
            answer.reset(MessageKind::Response, 0, Bytes::new());
            spare.push(answer);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_box_is_reused_empty_and_the_store_is_bounded() {
        let frame = Bytes::from_static(b"answer");
        let mut first = slot();
        first.reset(MessageKind::Response, 7, frame.clone());
        let address: *const Message = &*first;
        recycle(first);
        let again = slot();
        assert_eq!(&*again as *const Message, address);
        assert!(again.frame.is_empty(), "a kept box holds no frame");
        assert_eq!(again.request_id, 0);
        recycle(again);

        for _ in 0..SPARE_ANSWERS + 10 {
            recycle(Box::new(Message::new(
                MessageKind::Response,
                0,
                frame.clone(),
            )));
        }
        assert_eq!(SPARE.with_borrow(Vec::len), SPARE_ANSWERS);
    }
}
