//! Codec errors.

use std::borrow::Cow;

/// Why a codec could not decode or encode a frame.
///
/// A decode error means the byte stream can no longer be trusted: the engine closes that one
/// connection and counts the error under [`CodecError::counter_name`]. Requests that are
/// well-formed but cannot be proxied are not errors; see [`crate::Message::reject_reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// A length field announced a frame larger than the configured maximum.
    #[error("frame of {size} bytes exceeds max_frame_bytes {max}")]
    FrameTooLarge {
        /// The announced size.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// The bytes do not follow the protocol (bad magic, truncated field, wrong type ...).
    #[error("malformed frame: {0}")]
    Malformed(Cow<'static, str>),
    /// A valid frame using a feature this codec does not support.
    #[error("unsupported: {0}")]
    Unsupported(Cow<'static, str>),
    /// The message cannot be encoded as asked (an id outside the protocol's range, a mutation
    /// the frame's encoding cannot carry ...).
    #[error("cannot encode: {0}")]
    Encode(Cow<'static, str>),
}

impl CodecError {
    /// A [`CodecError::Malformed`] with a static reason.
    pub const fn malformed(reason: &'static str) -> Self {
        Self::Malformed(Cow::Borrowed(reason))
    }

    /// The stable metric label for this error.
    pub fn counter_name(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::Malformed(_) => "malformed",
            Self::Unsupported(_) => "unsupported",
            Self::Encode(_) => "encode",
        }
    }
}

/// An invalid codec option in the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("codec option `{field}`: {reason}")]
pub struct OptionsError {
    /// The option's name.
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
}

impl OptionsError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
