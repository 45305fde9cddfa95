//! A zero-copy reading of `RpcMeta`: every field brpc defines, strings as places in the frame.

use std::ops::Range;

use bytes::Bytes;
use metaprotocol_core::{CodecError, Metadata, MetadataStr};

use crate::header::{FrameHeader, HEADER_LEN};
use crate::wire::{Field, FieldReader, WireValue};

/// `RpcMeta` field numbers (see [`crate::proto::RpcMeta`]).
pub(crate) mod field {
    pub(crate) const REQUEST: u32 = 1;
    pub(crate) const RESPONSE: u32 = 2;
    pub(crate) const COMPRESS_TYPE: u32 = 3;
    pub(crate) const CORRELATION_ID: u32 = 4;
    pub(crate) const ATTACHMENT_SIZE: u32 = 5;
    pub(crate) const CHUNK_INFO: u32 = 6;
    pub(crate) const AUTHENTICATION_DATA: u32 = 7;
    pub(crate) const STREAM_SETTINGS: u32 = 8;
    pub(crate) const USER_FIELDS: u32 = 9;
    pub(crate) const CONTENT_TYPE: u32 = 10;
    pub(crate) const CHECKSUM_TYPE: u32 = 11;
    pub(crate) const CHECKSUM_VALUE: u32 = 12;
    pub(crate) const CHECKSUM_WITH_ATTACHMENT: u32 = 13;
    /// Key and value of a map entry (`user_fields`).
    pub(crate) const MAP_KEY: u32 = 1;
    pub(crate) const MAP_VALUE: u32 = 2;
}

/// `RpcRequestMeta` field numbers.
pub(crate) mod request_field {
    pub(super) const SERVICE_NAME: u32 = 1;
    pub(super) const METHOD_NAME: u32 = 2;
    pub(super) const LOG_ID: u32 = 3;
    pub(crate) const TRACE_ID: u32 = 4;
    pub(crate) const SPAN_ID: u32 = 5;
    pub(crate) const PARENT_SPAN_ID: u32 = 6;
    pub(super) const REQUEST_ID: u32 = 7;
    pub(crate) const TIMEOUT_MS: u32 = 8;
}

/// `RpcResponseMeta` field numbers.
mod response_field {
    pub(super) const ERROR_CODE: u32 = 1;
    pub(super) const ERROR_TEXT: u32 = 2;
}

/// A string of a meta, checked to be UTF-8: where it lies in the buffer the view was read
/// from (the frame, for [`RpcMetaView::from_frame`]). A place rather than a string, so that
/// reading a meta takes no reference to the buffer per string; the codec hands it to the
/// message's metadata, which lies over the same frame, as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaText(Range<usize>);

impl MetaText {
    /// Where the text lies in the buffer the view was read from.
    pub fn range(&self) -> Range<usize> {
        self.0.clone()
    }

    /// The text in `buf`, the buffer the view was read from; `None` if `buf` holds no text
    /// there (it is another buffer).
    pub fn text_in<'a>(&self, buf: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(buf.get(self.range())?).ok()
    }
}

impl From<MetaText> for MetadataStr {
    fn from(text: MetaText) -> Self {
        MetadataStr::Source(text.0)
    }
}

/// The fields of an `RpcRequestMeta`. Strings that are not UTF-8 read as absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMetaView {
    /// `service_name` (1).
    pub service_name: Option<MetaText>,
    /// `method_name` (2).
    pub method_name: Option<MetaText>,
    /// `log_id` (3).
    pub log_id: Option<i64>,
    /// `trace_id` (4).
    pub trace_id: Option<i64>,
    /// `span_id` (5).
    pub span_id: Option<i64>,
    /// `parent_span_id` (6).
    pub parent_span_id: Option<i64>,
    /// `request_id` (7).
    pub request_id: Option<MetaText>,
    /// `timeout_ms` (8).
    pub timeout_ms: Option<i32>,
}

/// The fields of an `RpcResponseMeta`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseMetaView {
    /// `error_code` (1); 0 when absent.
    pub error_code: i32,
    /// `error_text` (2).
    pub error_text: Option<MetaText>,
}

/// Every field of one `RpcMeta`, read without copying: strings are places in the buffer read
/// ([`MetaText`]), bytes are slices of it.
///
/// Repeated occurrences of a field follow protobuf rules (the last scalar wins, messages merge),
/// and a field whose wire type does not match its definition is treated as unknown, as brpc's
/// generated parser does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RpcMetaView {
    /// `request` (1), present on requests.
    pub request: Option<RequestMetaView>,
    /// `response` (2), present on responses.
    pub response: Option<ResponseMetaView>,
    /// `compress_type` (3); 0 when absent.
    pub compress_type: i32,
    /// `correlation_id` (4), as the unsigned 64-bit pattern on the wire.
    pub correlation_id: Option<u64>,
    /// `attachment_size` (5), an `int32`; 0 when absent. A negative size, or one larger than
    /// what follows the meta, is malformed.
    pub attachment_size: i32,
    /// True if `chunk_info` (6) is present.
    pub has_chunk_info: bool,
    /// `authentication_data` (7).
    pub authentication_data: Option<Bytes>,
    /// True if `stream_settings` (8) is present: the call opens a streaming RPC.
    pub has_stream_settings: bool,
    /// `user_fields` (9) whose key and value are UTF-8, in wire order (a repeated key keeps its
    /// last value, as a protobuf map does): metadata over the buffer read.
    pub user_fields: Metadata,
    /// `content_type` (10); 0 (protobuf) when absent.
    pub content_type: i32,
    /// `checksum_type` (11); 0 (none) when absent.
    pub checksum_type: i32,
    /// `checksum_value` (12).
    pub checksum_value: Option<Bytes>,
    /// `checksum_with_attachment` (13).
    pub checksum_with_attachment: bool,
    /// Where the last `correlation_id` field sits in the meta: the whole field and its value.
    pub(crate) correlation_id_span: Option<(Range<usize>, usize)>,
}

impl RpcMetaView {
    /// Reads the `RpcMeta` of `frame`, exactly one whole frame (such as the
    /// [`Message::frame`](metaprotocol_core::Message::frame) of a message this codec decoded).
    pub fn from_frame(frame: &Bytes) -> Result<Self, CodecError> {
        let header = FrameHeader::of_whole_frame(frame)?;
        Self::with_user_fields(frame, HEADER_LEN..header.meta_end())
    }

    /// Reads the serialized `RpcMeta` in `meta`.
    pub fn parse(meta: &Bytes) -> Result<Self, CodecError> {
        Self::with_user_fields(meta, 0..meta.len())
    }

    /// Reads the meta at `meta` in `buf`, its user fields included (into the view's own).
    fn with_user_fields(buf: &Bytes, meta: Range<usize>) -> Result<Self, CodecError> {
        let mut view = Self {
            user_fields: Metadata::over(buf.clone()),
            ..Self::default()
        };
        view.read(buf, meta, None)?;
        Ok(view)
    }

    /// Merges the serialized `RpcMeta` at `meta` within `buf` (an out-of-range `meta` reads as
    /// empty) into this view, inserting its `user_fields` into `user_fields` when given rather
    /// than the view's own: the decoder fills the message's metadata in place. Either must be
    /// metadata over `buf`: the fields go in as places in it. Strings are places in `buf`; the
    /// spans in `correlation_id_span` are offsets from the meta's start. The view is filled in
    /// place rather than returned, as it is large (its own, unused, `Metadata`).
    pub(crate) fn read(
        &mut self,
        buf: &Bytes,
        meta: Range<usize>,
        mut user_fields: Option<&mut Metadata>,
    ) -> Result<(), CodecError> {
        let meta = Within::new(buf, meta);
        for field in FieldReader::new(meta.bytes()) {
            self.read_field(meta, field?, user_fields.as_deref_mut())?;
        }
        Ok(())
    }

    fn read_field(
        &mut self,
        meta: Within<'_>,
        field: Field,
        user_fields: Option<&mut Metadata>,
    ) -> Result<(), CodecError> {
        match (field.number, field.value) {
            (field::REQUEST, WireValue::Bytes(range)) => {
                let request = self.request.get_or_insert_with(RequestMetaView::default);
                request.merge(meta.nested(range))?;
            }
            (field::RESPONSE, WireValue::Bytes(range)) => {
                let response = self.response.get_or_insert_with(ResponseMetaView::default);
                response.merge(meta.nested(range))?;
            }
            (field::COMPRESS_TYPE, WireValue::Varint(v)) => self.compress_type = v as i32,
            (field::CORRELATION_ID, WireValue::Varint(v)) => {
                self.correlation_id = Some(v);
                self.correlation_id_span = Some((field.span, field.value_start));
            }
            (field::ATTACHMENT_SIZE, WireValue::Varint(v)) => self.attachment_size = v as i32,
            (field::CHUNK_INFO, WireValue::Bytes(_)) => self.has_chunk_info = true,
            (field::AUTHENTICATION_DATA, WireValue::Bytes(range)) => {
                self.authentication_data = Some(meta.slice(range));
            }
            (field::STREAM_SETTINGS, WireValue::Bytes(_)) => self.has_stream_settings = true,
            (field::USER_FIELDS, WireValue::Bytes(range)) => {
                let entry = meta.nested(range);
                let (key, value) = map_entry(entry.bytes())?;
                // Inserting checks that both are UTF-8 text; an entry that is not is skipped.
                user_fields.unwrap_or(&mut self.user_fields).insert(
                    MetadataStr::Source(entry.absolute(key)),
                    MetadataStr::Source(entry.absolute(value)),
                );
            }
            (field::CONTENT_TYPE, WireValue::Varint(v)) => self.content_type = v as i32,
            (field::CHECKSUM_TYPE, WireValue::Varint(v)) => self.checksum_type = v as i32,
            (field::CHECKSUM_VALUE, WireValue::Bytes(range)) => {
                self.checksum_value = Some(meta.slice(range));
            }
            (field::CHECKSUM_WITH_ATTACHMENT, WireValue::Varint(v)) => {
                self.checksum_with_attachment = v != 0;
            }
            _ => {}
        }
        Ok(())
    }
}

impl RequestMetaView {
    fn merge(&mut self, meta: Within<'_>) -> Result<(), CodecError> {
        for field in FieldReader::new(meta.bytes()) {
            match field?.into_parts() {
                (request_field::SERVICE_NAME, WireValue::Bytes(r)) => {
                    self.service_name = meta.utf8(r);
                }
                (request_field::METHOD_NAME, WireValue::Bytes(r)) => {
                    self.method_name = meta.utf8(r);
                }
                (request_field::LOG_ID, WireValue::Varint(v)) => self.log_id = Some(v as i64),
                (request_field::TRACE_ID, WireValue::Varint(v)) => self.trace_id = Some(v as i64),
                (request_field::SPAN_ID, WireValue::Varint(v)) => self.span_id = Some(v as i64),
                (request_field::PARENT_SPAN_ID, WireValue::Varint(v)) => {
                    self.parent_span_id = Some(v as i64);
                }
                (request_field::REQUEST_ID, WireValue::Bytes(r)) => self.request_id = meta.utf8(r),
                (request_field::TIMEOUT_MS, WireValue::Varint(v)) => {
                    self.timeout_ms = Some(v as i32);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl ResponseMetaView {
    fn merge(&mut self, meta: Within<'_>) -> Result<(), CodecError> {
        for field in FieldReader::new(meta.bytes()) {
            match field?.into_parts() {
                (response_field::ERROR_CODE, WireValue::Varint(v)) => self.error_code = v as i32,
                (response_field::ERROR_TEXT, WireValue::Bytes(r)) => self.error_text = meta.utf8(r),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A message being walked: the buffer it lies in and where. The walker's offsets, relative to
/// the message, slice values straight out of the buffer, with no `Bytes` per nested message.
#[derive(Clone, Copy)]
struct Within<'a> {
    buf: &'a Bytes,
    start: usize,
    end: usize,
}

impl<'a> Within<'a> {
    fn new(buf: &'a Bytes, range: Range<usize>) -> Self {
        Self {
            buf,
            start: range.start,
            end: range.end,
        }
    }

    /// The message's bytes; none if it does not lie within the buffer.
    fn bytes(self) -> &'a [u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// The message nested at `range` of this one (as the walker of [`Within::bytes`] reports
    /// it, so within the buffer).
    fn nested(self, range: Range<usize>) -> Self {
        Self::new(self.buf, self.absolute(range))
    }

    /// The bytes at `range` of this message.
    fn slice(self, range: Range<usize>) -> Bytes {
        self.buf.slice(self.absolute(range))
    }

    /// Where `range` of this message lies in the buffer.
    fn absolute(self, range: Range<usize>) -> Range<usize> {
        self.start + range.start..self.start + range.end
    }

    /// The text at `range` of this message; `None` if it is not UTF-8.
    fn utf8(self, range: Range<usize>) -> Option<MetaText> {
        let at = self.absolute(range);
        metaprotocol_core::is_text(self.buf.get(at.clone())?).then_some(MetaText(at))
    }
}

impl Field {
    fn into_parts(self) -> (u32, WireValue) {
        (self.number, self.value)
    }
}

/// Where the key and value of one map entry (`user_fields`) sit within `entry`; a missing key or
/// value is an empty range, as protobuf reads it.
pub(crate) fn map_entry(entry: &[u8]) -> Result<(Range<usize>, Range<usize>), CodecError> {
    let mut key = 0..0;
    let mut value = 0..0;
    for field in FieldReader::new(entry) {
        match field?.into_parts() {
            (field::MAP_KEY, WireValue::Bytes(r)) => key = r,
            (field::MAP_VALUE, WireValue::Bytes(r)) => value = r,
            _ => {}
        }
    }
    Ok((key, value))
}
