//! The codec's use of [`FrameLayout`]: where the meta ends, where `correlation_id` sits, and
//! whether the meta carries `authentication_data`.

use std::borrow::Cow;
use std::ops::Range;

use metaprotocol_core::{CodecError, FrameLayout, Message};

use crate::header::HEADER_LEN;

/// Offsets into a decoded frame, from its first byte.
///
/// Slots of [`FrameLayout`]: 0 the end of the meta (start of the payload), 1 and 2 the start and
/// end of the last `correlation_id` field (tag included), 3 the start of its varint value. A
/// frame without `correlation_id` records the empty field `meta_end..meta_end`, which is where
/// a rewrite appends one. Slot 4 is 1 when the meta carries `authentication_data`, which an
/// upstream codec drops from requests and a downstream one from responses, and 0 otherwise. Slot 5 is unused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BrpcLayout {
    /// The end of the meta.
    pub(crate) meta_end: usize,
    /// The `correlation_id` field, or the empty range at `meta_end`.
    pub(crate) id_field: Range<usize>,
    /// Where the field's varint value starts.
    pub(crate) id_value_start: usize,
    /// Whether the meta carries `authentication_data`.
    pub(crate) has_authentication: bool,
}

impl BrpcLayout {
    /// The layout of a frame whose meta ends at `meta_end` and whose `correlation_id` field (as
    /// offsets within the meta: the field, and its value's start) is `id_in_meta`, and which
    /// carries `authentication_data` if `has_authentication`.
    pub(crate) fn new(
        meta_end: usize,
        id_in_meta: Option<&(Range<usize>, usize)>,
        has_authentication: bool,
    ) -> Self {
        match id_in_meta {
            Some((field, value_start)) => Self {
                meta_end,
                id_field: HEADER_LEN + field.start..HEADER_LEN + field.end,
                id_value_start: HEADER_LEN + value_start,
                has_authentication,
            },
            None => Self {
                meta_end,
                id_field: meta_end..meta_end,
                id_value_start: meta_end,
                has_authentication,
            },
        }
    }

    /// True if the frame carries a `correlation_id` field.
    pub(crate) fn has_id(&self) -> bool {
        !self.id_field.is_empty()
    }

    /// Reads and checks the layout the codec recorded in `message`.
    pub(crate) fn of(message: &Message) -> Result<Self, CodecError> {
        let [
            meta_end,
            id_start,
            id_end,
            id_value_start,
            authentication,
            _,
        ] = message.layout.0.map(|v| v as usize);
        let consistent = HEADER_LEN <= id_start
            && id_start <= id_value_start
            && id_value_start <= id_end
            && id_end <= meta_end
            && meta_end <= message.frame.len();
        if !consistent {
            return Err(CodecError::Encode(Cow::Borrowed(
                "message was not decoded by the brpc codec (inconsistent frame layout)",
            )));
        }
        Ok(Self {
            meta_end,
            id_field: id_start..id_end,
            id_value_start,
            has_authentication: authentication != 0,
        })
    }

    /// The layout as stored in a [`Message`]. Offsets fit in `u32` because the codec caps frames
    /// at `u32::MAX` bytes (see [`crate::BrpcCodec::new`]).
    pub(crate) fn to_frame_layout(&self) -> FrameLayout {
        let slot = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        FrameLayout([
            slot(self.meta_end),
            slot(self.id_field.start),
            slot(self.id_field.end),
            slot(self.id_value_start),
            u32::from(self.has_authentication),
            0,
        ])
    }
}
