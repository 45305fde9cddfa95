//! The codec-private offsets kept in [`FrameLayout`].
//!
//! Slot 0: where the message starts in the frame (0 unframed, 4 framed, after the header block
//! for THeader). Slots 1 and 2: the start and end of the encoded seqid, so that encode patches
//! it without parsing. Slot 3: 1 for a lax binary message, which encode writes strict, 0
//! otherwise (decided once, where decode reads the header's first word). Other slots are
//! unused.

use std::borrow::Cow;
use std::ops::Range;

use metaprotocol_core::{CodecError, FrameLayout, Message};

/// The offsets encode needs, checked against the frame they describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) payload_start: usize,
    pub(crate) seqid: Range<usize>,
    /// Whether the message is lax binary: a header without the version word, as
    /// `TBinaryProtocol` writes with `strictWrite` off. Such a message is written strict: a
    /// server that reads strictly (`strictRead`, as many Java and C++ servers are set up)
    /// refuses a lax one by closing its connection, which other clients' calls share, and
    /// every binary reader takes a strict one.
    pub(crate) lax: bool,
}

impl From<Layout> for FrameLayout {
    fn from(layout: Layout) -> Self {
        // Frames are capped at max_frame_bytes <= i32::MAX (see ThriftCodec::new): offsets fit.
        FrameLayout([
            layout.payload_start as u32,
            layout.seqid.start as u32,
            layout.seqid.end as u32,
            u32::from(layout.lax),
            0,
            0,
        ])
    }
}

impl Layout {
    /// The layout of `message`, refused if it does not fit its frame (a message this codec did
    /// not decode).
    pub(crate) fn of(message: &Message) -> Result<Self, CodecError> {
        let [payload_start, start, end, lax, ..] = message.layout.0.map(|v| v as usize);
        if payload_start <= start && start < end && end <= message.frame.len() {
            Ok(Self {
                payload_start,
                seqid: start..end,
                lax: lax != 0,
            })
        } else {
            Err(CodecError::Encode(Cow::Borrowed(
                "message layout does not match its frame (not decoded by the thrift codec?)",
            )))
        }
    }
}
