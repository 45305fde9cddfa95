//! Response bodies (Hessian2, status 20): a result flag, the result, optional attachments.
//!
//! | flag | body after the flag |
//! |---|---|
//! | 0 | exception |
//! | 1 | value |
//! | 2 | nothing (null result) |
//! | 3 | exception, attachments |
//! | 4 | value, attachments |
//! | 5 | attachments (null result) |
//!
//! Responses with another status carry an error message string instead, and no attachments.

use bytes::Bytes;
use metaprotocol_core::{CodecError, Metadata, ResponseStatus};

use crate::attachments;
use crate::header::HEADER_LEN;
use crate::hessian::printed::References;
use crate::hessian::reader::Reader;
use crate::hessian::skip::Skipper;
use crate::layout::{AttachmentsLayout, Body};

/// A Dubbo result flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResultFlag(u8);

impl ResultFlag {
    const EXCEPTION: u8 = 0;
    const NULL_VALUE: u8 = 2;
    const EXCEPTION_WITH_ATTACHMENTS: u8 = 3;
    const NULL_VALUE_WITH_ATTACHMENTS: u8 = 5;
    /// Adding this to a flag without attachments gives the flag with attachments.
    const WITH_ATTACHMENTS: u8 = 3;

    /// Reads the flag at the start of a response body.
    pub(crate) fn read(reader: &mut Reader<'_>) -> Result<Self, CodecError> {
        match u8::try_from(reader.int()?) {
            Ok(flag @ 0..=5) => Ok(Self(flag)),
            _ => Err(CodecError::malformed("unknown Dubbo result flag")),
        }
    }

    /// The flag's value.
    pub(crate) fn value(self) -> u8 {
        self.0
    }

    /// True if the result is an exception.
    fn is_exception(self) -> bool {
        matches!(self.0, Self::EXCEPTION | Self::EXCEPTION_WITH_ATTACHMENTS)
    }

    /// True if attachments follow the result.
    pub(crate) fn has_attachments(self) -> bool {
        self.0 >= Self::WITH_ATTACHMENTS
    }

    /// True if a value or exception follows the flag.
    fn has_result(self) -> bool {
        !matches!(self.0, Self::NULL_VALUE | Self::NULL_VALUE_WITH_ATTACHMENTS)
    }

    /// The same outcome, announcing attachments.
    pub(crate) fn with_attachments(self) -> Self {
        if self.has_attachments() {
            self
        } else {
            Self(self.0 + Self::WITH_ATTACHMENTS)
        }
    }
}

/// Decodes the status, metadata (the attachments, read as a request's are, into `metadata`,
/// which starts empty) and layout of a Hessian2 response with status 20. Filling the message's
/// own metadata in place spares moving it; on an error it holds what was read before, and the
/// caller empties it.
pub(crate) fn decode(
    frame: &Bytes,
    metadata: &mut Metadata,
) -> Result<(ResponseStatus, AttachmentsLayout), CodecError> {
    let mut reader = Reader::new(frame, HEADER_LEN);
    let flag = ResultFlag::read(&mut reader)?;
    let status = if flag.is_exception() {
        ResponseStatus::ApplicationError
    } else {
        ResponseStatus::Ok
    };
    let mut layout = AttachmentsLayout {
        body: Body::Response,
        flag_end: reader.position(),
        // Without attachments the result runs to the end of the body; it is not walked.
        map: attachments::MapBounds::absent(frame.len()),
        class_defs: 0,
    };
    if flag.has_attachments() {
        // A Java client reads the result as the body's first object.
        let mut references = References::new(frame, reader.position());
        let mut skipper = Skipper::new();
        skip_result(flag, &mut reader, &mut skipper)?;
        layout.map = attachments::visit(&mut reader, &mut skipper, |entry, classes| {
            match entry.text(frame) {
                Some((key, value)) => {
                    metadata.insert(key, value);
                }
                // As in a request: the client's Java code reads it all the same.
                None => entry.insert_other(frame, classes, &mut references, metadata),
            }
            Ok(())
        })?;
        layout.class_defs = skipper.class_defs();
    }
    Ok((status, layout))
}

/// A reader at the attachments map of a response `frame`, with the class definitions of the
/// result learnt into `skipper` (new), for rewriting a map whose entries may use them.
pub(crate) fn reader_at_attachments<'a>(
    frame: &'a [u8],
    skipper: &mut Skipper,
) -> Result<Reader<'a>, CodecError> {
    let mut reader = Reader::new(frame, HEADER_LEN);
    let flag = ResultFlag::read(&mut reader)?;
    skip_result(flag, &mut reader, skipper)?;
    Ok(reader)
}

/// Skips the value or exception after `flag`, if there is one, its class definitions into
/// `skipper`. The skipper (about 150 bytes) is the caller's: returned, it was copied out with a
/// `memcpy` call.
fn skip_result(
    flag: ResultFlag,
    reader: &mut Reader<'_>,
    skipper: &mut Skipper,
) -> Result<(), CodecError> {
    if flag.has_result() {
        skipper.skip_value(reader)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// A response attachment that refers to the result reads as the result: a Java client
    /// numbers the objects it reads from the result on.
    #[test]
    fn an_attachment_that_refers_to_the_result_reads_as_it() -> Result<(), CodecError> {
        let mut frame = BytesMut::new();
        crate::header::Header::put(&mut frame, 0x02, 20, 1);
        // Flag 4 (a value, attachments), the value {k=v}, then {echo: the value}.
        frame.put_slice(b"\x94H\x01k\x01vZH\x04echo\x51\x90Z");
        crate::header::patch_body_len(&mut frame, 0, 1 << 20)?;
        let mut codec = crate::DubboCodec::new(1 << 20);
        let response = metaprotocol_core::Codec::decode(&mut codec, &mut frame)?
            .ok_or(CodecError::malformed("incomplete"))?;
        assert_eq!(response.metadata.get("echo"), Some("{k=v}"));
        Ok(())
    }
}
