//! Request bodies (Hessian2): the call header fields, the arguments, the attachments.
//!
//! ```text
//! dubbo-version  service-path  service-version  method  parameter-descriptor
//! argument*      attachments-map?
//! ```
//!
//! The number of arguments comes from the parameter descriptor (see [`argument_count`]); the
//! arguments are skipped, never built.

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{ByteStr, CodecError, Metadata, MetadataStr, Mutation, keys};

use crate::attachments::{self, Entry, slice};
use crate::build::DUBBO_PROTOCOL_VERSION;
use crate::deadline;
use crate::header::HEADER_LEN;
use crate::hessian::NULL;
use crate::hessian::printed::References;
use crate::hessian::reader::{Reader, StringData};
use crate::hessian::skip::Skipper;
use crate::hessian::writer::write_string;
use crate::layout::{AttachmentsLayout, Body};

/// What a request's decoding yields besides its metadata: its layout, and whether its client
/// reads response attachments.
pub(crate) struct DecodedRequest {
    pub layout: AttachmentsLayout,
    pub reads_response_attachments: bool,
    /// True if the call's (last) `timeout` attachment is a string, the consumer's timeout in
    /// milliseconds as Java, dubbo-go and sofa-rpc-node write it (dubbo2.js writes an int of
    /// seconds): see [`crate::deadline`].
    pub timeout_is_text: bool,
}

/// Decodes the metadata (into `metadata`, which starts empty) and layout of a Hessian2 request
/// frame. Filling the message's own metadata in place spares moving it; on an error it holds
/// what was read before, and the caller empties it.
pub(crate) fn decode(frame: &Bytes, metadata: &mut Metadata) -> Result<DecodedRequest, CodecError> {
    let mut skipper = Skipper::new();
    let (fields, values_at, mut reader) = read_call(frame, &mut skipper)?;
    // The provider reads each call field whatever its bytes (Java's Hessian2 reader decodes
    // an overlong or broken sequence as some character, `d\xc1\xa5mo.Admin` as `demo.Admin`):
    // one that cannot be decoded here would leave the metadata without the service, version or
    // method that runs, or the arguments counted otherwise than by the provider.
    let text = |data: &Option<StringData>| {
        data.as_ref()
            .map(|d| d.to_metadata(frame).ok_or(UNDECODABLE_FIELD))
            .transpose()
    };
    if let Some(path) = text(&fields.path)? {
        metadata.insert(keys::INTERFACE, path.clone());
        metadata.insert(keys::SERVICE, path);
    }
    if let Some(method) = text(&fields.method)? {
        metadata.insert(keys::METHOD, method);
    }
    let version = match &fields.version {
        Some(version) => version_text(version, frame).ok_or(UNDECODABLE_FIELD)?,
        None => NO_VERSION,
    };
    metadata.insert(keys::VERSION, version);
    if fields
        .descriptor
        .as_ref()
        .is_some_and(|descriptor| !descriptor.is_text(frame))
    {
        return Err(UNDECODABLE_FIELD);
    }
    // Java providers find the service by the `path` attachment, which replaces the call field
    // (`DubboProtocol.getInvoker`); other providers may go by the field. A call naming one
    // service in its fields and another there would run a service other than the one routes
    // and policies saw, on one provider or the other: it is refused. Clients send the same path
    // in both, which costs a comparison.
    let call_path = fields.path.as_ref().map(|path| path.raw(frame));
    let mut references = References::new(frame, values_at);
    let mut timeout_is_text = false;
    let map = attachments::visit(&mut reader, &mut skipper, |entry, classes| {
        let key = entry.key.as_ref().map(|k| k.raw(frame));
        if key == Some(deadline::TIMEOUT.as_bytes()) {
            timeout_is_text = entry.value.is_some();
        }
        if let Some(key) = key {
            let value = entry.value.as_ref().map(|v| v.raw(frame));
            check_attachment(key, |text| value == Some(text), || value == call_path)?;
        }
        if routes(&entry, frame) {
            let text = match key {
                Some(VERSION_ATTACHMENT) => entry
                    .value
                    .as_ref()
                    .and_then(|value| version_text(value, frame))
                    .map(|value| (MetadataStr::Static(keys::VERSION), value)),
                _ => entry.text(frame),
            };
            match text {
                Some((key, value)) => {
                    metadata.insert(key, value);
                }
                None => {
                    let null = frame.get(entry.value_at) == Some(&NULL);
                    if null && key.is_some_and(|key| insert_null_version(key, metadata)) {
                        return Ok(());
                    }
                    // The version or group Java providers run would not be the metadata's, which
                    // keeps the call field's version or an earlier group. A null group is none,
                    // taken out below as any null is.
                    if let Some(refused) = selector_without_text(key).filter(|_| !null) {
                        return Err(refused);
                    }
                    // The provider reads a key or string value whatever its bytes: one that
                    // cannot be decoded here (a broken sequence Java reads as `group`, say)
                    // would be hidden from routes and policies.
                    if entry.value.is_some()
                        || entry.key.as_ref().is_some_and(|key| !key.is_text(frame))
                    {
                        return Err(UNDECODABLE_ATTACHMENT);
                    }
                    // Another value than a string is there for the provider all the same.
                    entry.insert_other(frame, classes, &mut references, metadata);
                }
            }
        }
        Ok(())
    })?;
    let layout = AttachmentsLayout {
        body: Body::Request,
        flag_end: 0,
        map,
        class_defs: skipper.class_defs(),
    };
    let reads_response_attachments = fields
        .dubbo_version
        .as_ref()
        .is_some_and(|v| reads_response_attachments(v.raw(frame)));
    Ok(DecodedRequest {
        layout,
        reads_response_attachments,
        timeout_is_text,
    })
}

/// True if a client speaking Dubbo protocol `version` understands result flags 3-5 (a result
/// followed by attachments). Like Java Dubbo's `Version.isSupportResponseAttachment`: protocol
/// versions 2.0.2 to 2.0.99. Clients outside the range (dubbo-py's default 2.5.3, a framework
/// version number) fail on such responses, so they get none.
pub fn reads_response_attachments(version: &[u8]) -> bool {
    // What nearly every client sends, and this crate's calls: decided without parsing.
    if version == DUBBO_PROTOCOL_VERSION.as_bytes() {
        return true;
    }
    let mut number = 0u64;
    let mut parts = 0;
    for part in version.split(|&byte| byte == b'.') {
        let Some(value) = decimal(part) else {
            return false;
        };
        parts += 1;
        if parts > 4 {
            return false;
        }
        // Java's Version.getIntVersion: two decimal digits per part, four parts.
        number = number * 100 + value.min(99);
    }
    for _ in parts..4 {
        number *= 100;
    }
    (2_000_200..=2_009_900).contains(&number)
}

/// A part of a version number read as `str::parse::<u64>` reads it, without a UTF-8 check
/// first: an optional `+`, then at least one ASCII digit; `None` for anything else (non-UTF-8
/// bytes included) or a number beyond `u64`.
fn decimal(part: &[u8]) -> Option<u64> {
    let digits = part.strip_prefix(b"+").unwrap_or(part);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |number, &byte| {
        let digit = char::from(byte).to_digit(10)?;
        number.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A reader at the attachments map of a request `frame`, with the class definitions of the
/// arguments learnt into `skipper` (new), for rewriting a map whose entries may use them.
pub(crate) fn reader_at_attachments<'a>(
    frame: &'a [u8],
    skipper: &mut Skipper,
) -> Result<Reader<'a>, CodecError> {
    read_call(frame, skipper).map(|(_, _, reader)| reader)
}

/// Reads the call fields and skips the arguments of a request `frame`, the arguments' class
/// definitions into `skipper` (new): the fields, where the arguments start (the first value a
/// Java provider reads as an object, where the values references name are counted from), and
/// a reader at the attachments.
// Inlined into the decoder, what it returns (about 270 bytes) is not copied out (3,845 -> 3,800
// instructions a request by `decode_cost`). The skipper (about 150 bytes since its class
// entries hold where their field names are) is the caller's: returned with them, it was copied
// out by `memcpy` calls, 116 instructions a proxied call with the response's (callgrind).
#[inline(always)]
fn read_call<'a>(
    frame: &'a [u8],
    skipper: &mut Skipper,
) -> Result<(CallFields<'a>, usize, Reader<'a>), CodecError> {
    let mut reader = Reader::new(frame, HEADER_LEN);
    let fields = CallFields::read(&mut reader)?;
    let values_at = reader.position();
    fields.skip_arguments(frame, &mut reader, skipper)?;
    Ok((fields, values_at, reader))
}

/// The header fields of a call (each may be null).
struct CallFields<'a> {
    dubbo_version: Option<StringData<'a>>,
    path: Option<StringData<'a>>,
    version: Option<StringData<'a>>,
    method: Option<StringData<'a>>,
    descriptor: Option<StringData<'a>>,
}

impl<'a> CallFields<'a> {
    fn read(reader: &mut Reader<'a>) -> Result<Self, CodecError> {
        Ok(Self {
            dubbo_version: reader.string()?,
            path: reader.string()?,
            version: reader.string()?,
            method: reader.string()?,
            descriptor: reader.string()?,
        })
    }

    fn skip_arguments(
        &self,
        frame: &[u8],
        reader: &mut Reader<'_>,
        skipper: &mut Skipper,
    ) -> Result<(), CodecError> {
        let descriptor = self.descriptor.as_ref().map_or(&[][..], |d| d.raw(frame));
        for _ in 0..argument_count(descriptor) {
            skipper.skip_value(reader)?;
        }
        Ok(())
    }
}

/// Refuses a call for its attachment keyed `key`, whatever its serialization: a callback
/// argument, a stub event (`value_is(b"true")`), a `path` attachment that does not repeat the
/// call's path (`path_matches()` false): see [`decode`].
#[inline(always)]
pub(crate) fn check_attachment(
    key: &[u8],
    value_is: impl FnOnce(&[u8]) -> bool,
    path_matches: impl FnOnce() -> bool,
) -> Result<(), CodecError> {
    if key.starts_with(CALLBACK_ARGUMENT) {
        return Err(CodecError::malformed(CALLBACK_REFUSED));
    }
    if key == STUB_EVENT && value_is(b"true") {
        return Err(CodecError::malformed(STUB_EVENT_REFUSED));
    }
    if key == PATH_ATTACHMENT && !path_matches() {
        return Err(CodecError::malformed(
            "the path attachment names another service than the call",
        ));
    }
    Ok(())
}

/// The attachment by which Java providers find the service a call runs; it must repeat the
/// call's path.
const PATH_ATTACHMENT: &[u8] = b"path";

/// The prefix of the attachments (`sys_callback_arg-<index>`) by which a Java client says that
/// an argument is a callback: the provider then calls the client back over the connection the
/// call came on (`CallbackServiceCodec`), keeping its callback proxies per connection (keyed by
/// the `callback.service.instid` the client chose, and counted against the service's
/// `callbacks` limit).
const CALLBACK_ARGUMENT: &[u8] = b"sys_callback_arg-";

/// Why a call with a callback argument is refused. Through a proxy, the provider's connection
/// is shared by many clients' calls: the provider's calls back would come to the proxy, which
/// takes no calls from upstreams (and could not tell whose callback one is), and clients would
/// replace, destroy and use up each other's callback proxies on it.
const CALLBACK_REFUSED: &str = "callback arguments (sys_callback_arg attachments) are not supported through the proxy: the provider would call back over a connection that other clients share";

/// The attachment by which Java Dubbo marks a stub event call (`dubbo.stub.event` = `true`): a
/// call of the service a consumer's local stub exports for its provider's events. A Java
/// provider looks such a call up under another port than its export's
/// (`DubboProtocol.getInvoker`: the connection's remote port in Dubbo 2, 0 in Dubbo 3), so it
/// finds no service; through the proxy, that remote port is the proxy's own, on a connection
/// other clients share.
const STUB_EVENT: &[u8] = b"dubbo.stub.event";

/// Why a stub event call is refused.
const STUB_EVENT_REFUSED: &str = "stub event calls (dubbo.stub.event attachment) are not supported through the proxy: a Java provider looks them up under another port than its service's (the proxy's own, or 0) and finds no service";

/// Why a call is refused whose service path, version, method or parameter types field is a
/// string that cannot be decoded (in Hessian2, bytes that are neither UTF-8 nor Java's
/// surrogate encoding; in fastjson2, as an attachment's: GB18030 past ASCII, UTF-8 or UTF-16
/// that is not).
pub(crate) const UNDECODABLE_FIELD: CodecError = CodecError::malformed(
    "a call field (service path, version, method or parameter types) is a string that cannot be decoded",
);

/// Why a Hessian2 call is refused whose attachment has a key or string value that cannot be
/// decoded (bytes that are neither UTF-8 nor Java's surrogate encoding, a lone surrogate
/// among them), as a fastjson2 call is.
const UNDECODABLE_ATTACHMENT: CodecError = CodecError::malformed(
    "an attachment's key or string value is a string that cannot be decoded (not UTF-8, or a lone surrogate)",
);

/// The attachment by which Java providers pick the version of the service that runs.
pub(crate) const VERSION_ATTACHMENT: &[u8] = keys::VERSION.as_bytes();

/// The versions Dubbo's service keys treat as none (`ProtocolUtils.serviceKey`,
/// `GroupServiceKeyCache`): a call of one runs the export without a version. `0.0.0`, the
/// default, in every release; `*` (any version) in Dubbo 3's, while Dubbo 2.7's keep it, so a
/// 2.7 provider finds no export for it and fails the call. Read as none, a call of `*` is
/// judged as the call of the export that a Dubbo 3 provider runs; read as `*`, a policy
/// keyed on the empty version would miss it.
pub(crate) const VERSIONS_READ_AS_NONE: [&[u8]; 2] = [b"0.0.0", b"*"];

/// The version of the export without one, as metadata: what Dubbo's default `0.0.0` names, and
/// a version field that is null. Java's DubboCodec reads the field as any string (a null as
/// none, which it keeps), and the provider looks the service up by it; its service keys take
/// none as they take `0.0.0` (`GroupServiceKeyCache`), so the export without a version runs.
pub(crate) const NO_VERSION: MetadataStr = MetadataStr::Static("");

/// A service version as metadata: Dubbo's default `0.0.0` (and `*`, see
/// [`VERSIONS_READ_AS_NONE`]) as the empty version, which names the export without a version
/// that runs it, so that routes and policies see one version for one export; `None` if it
/// cannot be represented in UTF-8.
fn version_text(version: &StringData<'_>, frame: &Bytes) -> Option<MetadataStr> {
    if VERSIONS_READ_AS_NONE.contains(&version.raw(frame)) {
        return Some(NO_VERSION);
    }
    version.to_metadata(frame)
}

/// Sets the empty version in `metadata` if `key`, that of a call's attachment whose value is
/// null, is `version`, and says whether it was. Java's map keeps the null as the key's last
/// value, and the provider looks the service up by `version` read as a string
/// (`DubboProtocol.getInvoker`), a null as none, which its service keys take as they take
/// `0.0.0`: the export without a version runs, whatever the call field said.
pub(crate) fn insert_null_version(key: &[u8], metadata: &mut Metadata) -> bool {
    if key != VERSION_ATTACHMENT {
        return false;
    }
    metadata.insert(keys::VERSION, NO_VERSION);
    true
}

/// The refusal of a call whose attachment keyed `key` cannot be metadata, if it is one of those
/// by which Java providers pick the export that runs (`DubboProtocol.getInvoker`: version and
/// group): the metadata would not say what runs.
pub(crate) fn selector_without_text(key: Option<&[u8]>) -> Option<CodecError> {
    const GROUP: &[u8] = keys::GROUP.as_bytes();
    match key? {
        VERSION_ATTACHMENT => Some(CodecError::malformed(
            "the version attachment is not a UTF-8 string",
        )),
        GROUP => Some(CodecError::malformed(
            "the group attachment is not a UTF-8 string",
        )),
        _ => None,
    }
}

/// Appends the bytes of call `frame` before its attachments map (at `map_start`). A mutation
/// that sets the `path` attachment sets the call's path field to the same service: Java
/// providers go by the attachment and others by the field, and a proxy downstream of this one
/// refuses a call whose two paths differ (see [`decode`]).
pub(crate) fn put_call_head(
    frame: &[u8],
    map_start: usize,
    mutation: &Mutation,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let Some(path) = renamed_path(mutation) else {
        dst.put_slice(slice(frame, 0..map_start)?);
        return Ok(());
    };
    let mut reader = Reader::new(frame, HEADER_LEN);
    reader.string()?;
    let field_start = reader.position();
    reader.string()?;
    dst.put_slice(slice(frame, 0..field_start)?);
    write_string(dst, &[path.as_str()]);
    dst.put_slice(slice(frame, reader.position()..map_start)?);
    Ok(())
}

/// The `path` attachment `mutation` sets: the call's new service, which its path field takes.
pub(crate) fn renamed_path(mutation: &Mutation) -> Option<&ByteStr> {
    mutation
        .sets()
        .iter()
        .find(|(key, _)| key.as_bytes() == PATH_ATTACHMENT)
        .map(|(_, path)| path)
}

/// True if an attachment may become metadata, judged on its raw key before any is built.
/// The `interface`, `service` and `method` keys are the call fields' (the provider reads the
/// method from them, and never an `interface` attachment: such attachments must not route a
/// call elsewhere); a `version` attachment overrides the header's version, an empty one too:
/// Java providers look the service up by the attachment, and an empty one (or Dubbo's default,
/// `0.0.0`) names the service exported without a version. A `path` attachment must repeat the
/// call's (see [`decode`]).
fn routes(entry: &Entry<'_>, frame: &[u8]) -> bool {
    entry
        .key
        .as_ref()
        .is_some_and(|key| !is_reserved(key.raw(frame)))
}

/// True for the keys only the frame header sets: the interface and the method. Inlined: it is
/// asked of every attachment of every call, and a call to it cost more than its comparisons.
#[inline]
pub(crate) fn is_reserved(key: &[u8]) -> bool {
    const INTERFACE: &[u8] = keys::INTERFACE.as_bytes();
    const SERVICE: &[u8] = keys::SERVICE.as_bytes();
    const METHOD: &[u8] = keys::METHOD.as_bytes();
    matches!(key, INTERFACE | SERVICE | METHOD)
}

/// The number of arguments a parameter descriptor declares.
///
/// Java clients send JVM descriptors: `Ljava/lang/String;` (a class, up to `;`), `[I` (arrays,
/// any number of `[` before one element type), `J` (a primitive letter). Some clients send
/// their own letters (dubbo-py sends `S` for a String): every other byte counts as one
/// argument, and an unterminated class name as one.
pub(crate) fn argument_count(descriptor: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = descriptor;
    while !rest.is_empty() {
        let element = rest.iter().position(|&b| b != b'[').unwrap_or(rest.len());
        let after = match rest.get(element) {
            Some(b'L') => rest
                .iter()
                .skip(element)
                .position(|&b| b == b';')
                .map_or(rest.len(), |semicolon| element + semicolon + 1),
            _ => element + 1,
        };
        rest = rest.get(after..).unwrap_or_default();
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose fields name one service and whose `path` attachment another runs the
    /// attachment's on a Java provider, and may run the field's on another: it is refused, so
    /// that no call is routed and authorized as one service and runs another.
    #[test]
    fn a_call_whose_path_attachment_names_another_service_is_refused() -> Result<(), CodecError> {
        use crate::build::{Call, request};
        let call = |attachments| Call {
            service: "demo.Public",
            version: "1.0.0",
            method: "greet",
            string_args: &["a"],
            attachments,
        };
        let decoded = |call: &Call<'_>| -> Result<metaprotocol_core::Message, CodecError> {
            let mut codec = crate::DubboCodec::new(1 << 20);
            let mut src = bytes::BytesMut::from(&request(1, true, call)[..]);
            metaprotocol_core::Codec::decode(&mut codec, &mut src)?
                .ok_or(CodecError::malformed("incomplete"))
        };
        let smuggled = decoded(&call(&[("path", "demo.Admin")]))?;
        assert_eq!(
            smuggled.reject_reason,
            Some("the path attachment names another service than the call")
        );
        assert_eq!(smuggled.metadata.get(keys::INTERFACE), None);
        // The usual call, its path in both places, and an `interface` attachment, which no
        // provider dispatches on.
        let plain = decoded(&call(&[("interface", "demo.Admin")]))?;
        assert_eq!(plain.reject_reason, None);
        let plain = plain.metadata;
        assert_eq!(plain.get(keys::INTERFACE), Some("demo.Public"));
        assert_eq!(plain.get(keys::SERVICE), Some("demo.Public"));
        Ok(())
    }

    /// A call as dubbo2.js 2.3.9 (hessian.js 2.5.0) encoded it, in hex, decoded.
    fn dubbojs_call(frame: &str) -> Result<metaprotocol_core::Message, CodecError> {
        let frame = hex::decode(frame).map_err(|_| CodecError::malformed("not hex"))?;
        let mut codec = crate::DubboCodec::new(1 << 20);
        metaprotocol_core::Codec::decode(&mut codec, &mut BytesMut::from(&frame[..]))?
            .ok_or(CodecError::malformed("incomplete"))
    }

    /// An attachment whose value is the same object as an argument or an earlier attachment
    /// is a Hessian2 reference (`Q` and the object's number) to it, which a Java provider reads
    /// as that object: it reads as the object's text. One in the list or map it refers to
    /// reads as Java prints that, `(this Collection)`; a cycle Java cannot print is cut.
    #[test]
    fn an_attachment_that_refers_to_an_earlier_value_reads_as_that_value() -> Result<(), CodecError>
    {
        // sayHello(tenant, tags) with attachments {tenant, tags, again: tenant, token}, the
        // same objects: hessian.js wrote each a second time as a reference.
        let call = dubbojs_call(concat!(
            "dabbc2000000000000000001000000c805322e302e320c64656d6f2e4772656574657205312e302e",
            "300873617948656c6c6f30284c6a6176612f7574696c2f486173684d61703b4c6a6176612f757469",
            "6c2f41727261794c6973743b4806726567696f6e02657506776569676874935a7a04677261790462",
            "6c75654805616761696e519009696e746572666163650c64656d6f2e477265657465720470617468",
            "0c64656d6f2e47726565746572047461677351910674656e616e74519005746f6b656e25000102fb",
            "ff0776657273696f6e05312e302e305a",
        ))?;
        assert_eq!(call.reject_reason, None);
        let text = |key| call.metadata.get(key);
        assert_eq!(text("tenant"), Some("{region=eu, weight=3}"));
        assert_eq!(text("again"), Some("{region=eu, weight=3}"));
        assert_eq!(text("tags"), Some("[gray, blue]"));
        assert_eq!(text("token"), Some("AAEC+/8="));
        // Attachments {cycle: a map whose inner map refers back to it, loop: ['a', loop]}.
        let call = dubbojs_call(concat!(
            "dabbc20000000000000000020000007b05322e302e320c64656d6f2e4772656574657205312e302e",
            "300873617948656c6c6f0048056379636c654805696e6e65724802757051915a5a09696e74657266",
            "6163650c64656d6f2e47726565746572046c6f6f707a0161519304706174680c64656d6f2e477265",
            "657465720776657273696f6e05312e302e305a",
        ))?;
        assert_eq!(call.metadata.get("loop"), Some("[a, (this Collection)]"));
        let cycle = call.metadata.get("cycle").unwrap_or_default();
        assert!(cycle.starts_with("{inner={up={inner={up={"), "{cycle}");
        assert!(cycle.ends_with("..."), "{cycle}");
        // The attachments map itself (the first object of a call without arguments), a
        // reference to no earlier object.
        let call = call_with_attachments("all", &[b"\x51\x90"])?;
        assert_eq!(
            call.metadata.get("all"),
            Some("{path=demo.Api, all=(this Map)}")
        );
        let call = call_with_attachments("later", &[b"\x51\x91"])?;
        assert_eq!(call.metadata.get("later"), Some(""));
        Ok(())
    }

    /// Following references reads bytes a second time: a frame's references read at most four
    /// times its body, past which their text is cut, however many there are.
    #[test]
    fn references_read_at_most_four_times_the_body() -> Result<(), CodecError> {
        use bytes::BufMut;
        let mut frame = BytesMut::new();
        crate::header::Header::put(&mut frame, 0xc2, 0, 1);
        for field in ["2.0.2", "demo.Api", "1.0.0", "hi", "Ljava/util/List;"] {
            write_string(&mut frame, &[field]);
        }
        // An empty list of a type whose name takes 10,000 bytes: "[]" for each reference.
        frame.put_u8(0x55);
        write_string(&mut frame, &["t".repeat(10_000).as_str()]);
        frame.put_u8(b'Z');
        frame.put_u8(b'H');
        for key in 0..100 {
            write_string(&mut frame, &[format!("k{key}").as_str()]);
            frame.put_slice(b"\x51\x90");
        }
        frame.put_u8(b'Z');
        crate::header::patch_body_len(&mut frame, 0, 1 << 20)?;
        let mut codec = crate::DubboCodec::new(1 << 20);
        let call = metaprotocol_core::Codec::decode(&mut codec, &mut frame)?
            .ok_or(CodecError::malformed("incomplete"))?;
        assert_eq!(call.reject_reason, None);
        let texts: Vec<_> = (0..100)
            .filter_map(|key| call.metadata.get(&format!("k{key}")))
            .collect();
        assert_eq!(texts.len(), 100);
        let printed = texts.iter().filter(|text| **text == "[]").count();
        assert!((3..=4).contains(&printed), "{printed} {:?}", &texts[..8]);
        assert!(
            texts[printed..].iter().all(|text| *text == "..."),
            "{texts:?}"
        );
        Ok(())
    }

    /// A call of `demo.Api` version 1.0.0 whose attachments say `path` and then `key` once for
    /// each of `values` (Hessian2 bytes), decoded.
    fn call_with_attachments(
        key: &str,
        values: &[&[u8]],
    ) -> Result<metaprotocol_core::Message, CodecError> {
        call_of_version("1.0.0", key, values)
    }

    /// [`call_with_attachments`] of `version` in the call field.
    fn call_of_version(
        version: &str,
        key: &str,
        values: &[&[u8]],
    ) -> Result<metaprotocol_core::Message, CodecError> {
        let mut field = BytesMut::new();
        write_string(&mut field, &[version]);
        call_of_version_field(&field, key, values)
    }

    /// [`call_with_attachments`] whose version field is `field` (Hessian2 bytes).
    fn call_of_version_field(
        field: &[u8],
        key: &str,
        values: &[&[u8]],
    ) -> Result<metaprotocol_core::Message, CodecError> {
        use bytes::BufMut;
        let mut frame = BytesMut::new();
        crate::header::Header::put(&mut frame, 0xc2, 0, 1);
        write_string(&mut frame, &["2.0.2"]);
        write_string(&mut frame, &["demo.Api"]);
        frame.put_slice(field);
        write_string(&mut frame, &["hi"]);
        write_string(&mut frame, &[""]);
        frame.put_u8(b'H');
        write_string(&mut frame, &["path"]);
        write_string(&mut frame, &["demo.Api"]);
        for value in values {
            write_string(&mut frame, &[key]);
            frame.put_slice(value);
        }
        frame.put_u8(b'Z');
        crate::header::patch_body_len(&mut frame, 0, 1 << 20)?;
        let mut codec = crate::DubboCodec::new(1 << 20);
        metaprotocol_core::Codec::decode(&mut codec, &mut frame)?
            .ok_or(CodecError::malformed("incomplete"))
    }

    /// Java providers look the service up by its `version` attachment, which replaces the call
    /// field even when it is empty (the service exported without a version): the metadata says
    /// the version that runs, so that routes and policies judge that one.
    #[test]
    fn an_empty_version_attachment_names_the_unversioned_service() -> Result<(), CodecError> {
        for (attachment, version) in [("", ""), ("2.0.0", "2.0.0"), ("1.0.0", "1.0.0")] {
            let mut value = BytesMut::new();
            write_string(&mut value, &[attachment]);
            let message = call_with_attachments("version", &[&value])?;
            assert_eq!(message.reject_reason, None);
            assert_eq!(message.metadata.get(keys::VERSION), Some(version));
        }
        Ok(())
    }

    /// Dubbo's service keys treat version `0.0.0` as none: a call of it, in the call field or
    /// the `version` attachment, runs the export without a version, so its metadata says the
    /// empty version, as for a call of that export without one.
    #[test]
    fn version_0_0_0_names_the_unversioned_service() -> Result<(), CodecError> {
        let mut default = BytesMut::new();
        write_string(&mut default, &["0.0.0"]);
        let mut other = BytesMut::new();
        write_string(&mut other, &["0.0.1"]);
        let cases: [(&str, &str, &[&[u8]], &str); 5] = [
            ("0.0.0", "x", &[b"\x011"], ""),
            ("1.0.0", "version", &[&default], ""),
            ("0.0.0", "version", &[&default], ""),
            ("0.0.0", "version", &[&other], "0.0.1"),
            ("0.0.0.0", "x", &[b"\x011"], "0.0.0.0"),
        ];
        versions_read(&cases)
    }

    /// Checks that each call of `(version field, attachment key, attachment values)` is read
    /// with the `version` its case ends with.
    fn versions_read(cases: &[(&str, &str, &[&[u8]], &str)]) -> Result<(), CodecError> {
        for &(field, key, values, version) in cases {
            let message = call_of_version(field, key, values)?;
            assert_eq!(message.reject_reason, None);
            assert_eq!(
                message.metadata.get(keys::VERSION),
                Some(version),
                "{field} {key}"
            );
        }
        Ok(())
    }

    /// Dubbo 3's service keys (`GroupServiceKeyCache.createServiceKey`) treat version `*` as
    /// none, as they treat `0.0.0`: a Dubbo 3 provider runs the export without a version for a
    /// call of `*`, in the call field or the `version` attachment, so its metadata says the
    /// empty version (a Dubbo 2.7 provider, whose keys keep `*`, finds no export and fails the
    /// call, whatever routes and policies judged).
    #[test]
    fn version_star_names_the_unversioned_service() -> Result<(), CodecError> {
        let mut star = BytesMut::new();
        write_string(&mut star, &["*"]);
        let cases: [(&str, &str, &[&[u8]], &str); 4] = [
            ("*", "x", &[b"\x011"], ""),
            ("1.0.0", "version", &[&star], ""),
            ("*", "version", &[b"\x052.0.0"], "2.0.0"),
            ("**", "x", &[b"\x011"], "**"),
        ];
        versions_read(&cases)
    }

    /// Java's DubboCodec reads the version field as any string, a Hessian null as none, and
    /// the provider looks the service up by it: its service keys take none as they take
    /// `0.0.0` (`GroupServiceKeyCache`), so the export without a version runs. A call whose
    /// version field is null says the empty version, as a call of that export does; a
    /// `version` attachment replaces it as it replaces any.
    #[test]
    fn a_null_version_field_names_the_unversioned_service() -> Result<(), CodecError> {
        let mut other = BytesMut::new();
        write_string(&mut other, &["2.0.0"]);
        let cases: [(&str, &[&[u8]], &str); 2] =
            [("x", &[b"\x011"], ""), ("version", &[&other], "2.0.0")];
        for (key, values, version) in cases {
            let message = call_of_version_field(b"N", key, values)?;
            assert_eq!(message.reject_reason, None);
            assert_eq!(message.metadata.get(keys::VERSION), Some(version), "{key}");
        }
        Ok(())
    }

    /// A call passing a callback argument (a `sys_callback_arg-<index>` attachment) would have
    /// the provider call back over its connection, which through the proxy is shared by other
    /// clients and takes no calls from the provider: it is refused, not forwarded to a callback
    /// that never reaches its client. Other attachments of that name's kind are routed as usual.
    #[test]
    fn a_call_with_a_callback_argument_is_refused() -> Result<(), CodecError> {
        for (key, value) in [("sys_callback_arg-1", "1"), ("sys_callback_arg-0", "2")] {
            let mut text = BytesMut::new();
            write_string(&mut text, &[value]);
            let message = call_with_attachments(key, &[&text])?;
            assert_eq!(message.reject_reason, Some(CALLBACK_REFUSED), "{key}");
        }
        let mut text = BytesMut::new();
        write_string(&mut text, &["1"]);
        for key in ["sys_callback_arg", "callback.service.instid"] {
            let message = call_with_attachments(key, &[&text])?;
            assert_eq!(message.reject_reason, None, "{key}");
            assert_eq!(message.metadata.get(key), Some("1"));
        }
        Ok(())
    }

    /// A stub event call (`dubbo.stub.event` = `true`) is looked up by a Java provider under
    /// another port than its export's, which through the proxy is the proxy's own: it would
    /// fail on the provider with "Not found exported service" (an exception status 70 that
    /// names the proxy's port), and is refused here with status 40 and the reason. The
    /// attachment with another value does not change the lookup, and is routed as usual.
    #[test]
    fn a_stub_event_call_is_refused() -> Result<(), CodecError> {
        let mut text = BytesMut::new();
        write_string(&mut text, &["true"]);
        let message = call_with_attachments("dubbo.stub.event", &[&text])?;
        assert_eq!(message.reject_reason, Some(STUB_EVENT_REFUSED));
        for value in ["false", "TRUE", ""] {
            let mut text = BytesMut::new();
            write_string(&mut text, &[value]);
            let message = call_with_attachments("dubbo.stub.event", &[&text])?;
            assert_eq!(message.reject_reason, None, "{value}");
            assert_eq!(message.metadata.get("dubbo.stub.event"), Some(value));
        }
        Ok(())
    }

    /// A `version` attachment that is not a string (an int) or not representable in UTF-8 (a
    /// lone surrogate) cannot be the call's version metadata: the call is refused rather than
    /// routed and authorized as the call field's version while another runs.
    #[test]
    fn a_version_attachment_that_is_no_text_is_refused() -> Result<(), CodecError> {
        for value in [&[0x91][..], &[0x01, 0xed, 0xa0, 0x80]] {
            let message = call_with_attachments("version", &[value])?;
            assert_eq!(
                message.reject_reason,
                Some("the version attachment is not a UTF-8 string"),
                "{value:02x?}"
            );
            assert_eq!(message.metadata.get(keys::VERSION), None);
        }
        Ok(())
    }

    /// Java providers look the service up by its `group` attachment too, the last of its name:
    /// a call whose `group` is no UTF-8 string (an int, a lone surrogate) is refused rather than
    /// routed and authorized as an earlier group or none.
    #[test]
    fn a_group_attachment_that_is_no_text_is_refused() -> Result<(), CodecError> {
        let g1: &[u8] = b"\x02g1";
        for groups in [&[g1, &[0x90]][..], &[&[0x01, 0xed, 0xa0, 0x80]]] {
            let message = call_with_attachments("group", groups)?;
            assert_eq!(
                message.reject_reason,
                Some("the group attachment is not a UTF-8 string"),
                "{groups:02x?}"
            );
            assert_eq!(message.metadata.get(keys::GROUP), None);
        }
        let plain = call_with_attachments("group", &[g1])?;
        assert_eq!(plain.reject_reason, None);
        assert_eq!(plain.metadata.get(keys::GROUP), Some("g1"));
        Ok(())
    }

    /// Java's map keeps a null attachment as the key's last value, and the provider looks the
    /// service up by `version` and `group` read as strings (`DubboProtocol.getInvoker`): a null
    /// is none, so the export without a version (or group) runs. A call whose `version`
    /// attachment is null says the empty version, whatever its field or an earlier attachment
    /// said; one whose `group` is null has no group, an earlier one taken out.
    #[test]
    fn a_null_version_or_group_attachment_names_the_export_without_one() -> Result<(), CodecError> {
        let v2: &[u8] = b"\x052.0.0";
        for versions in [&[&b"N"[..]][..], &[v2, b"N"]] {
            let message = call_with_attachments("version", versions)?;
            assert_eq!(message.reject_reason, None, "{versions:02x?}");
            assert_eq!(
                message.metadata.get(keys::VERSION),
                Some(""),
                "{versions:02x?}"
            );
        }
        let g1: &[u8] = b"\x02g1";
        for groups in [&[&b"N"[..]][..], &[g1, b"N"]] {
            let message = call_with_attachments("group", groups)?;
            assert_eq!(message.reject_reason, None, "{groups:02x?}");
            assert_eq!(message.metadata.get(keys::GROUP), None, "{groups:02x?}");
            assert_eq!(message.metadata.get(keys::VERSION), Some("1.0.0"));
        }
        Ok(())
    }

    #[test]
    fn counts_descriptor_arguments() {
        assert_eq!(argument_count(b""), 0);
        assert_eq!(argument_count(b"Ljava/lang/String;"), 1);
        assert_eq!(argument_count(b"S"), 1);
        assert_eq!(
            argument_count(b"IJLjava/util/Map;[I[[Ljava/lang/Object;Z"),
            6
        );
        assert_eq!(argument_count(b"SS"), 2);
        assert_eq!(argument_count(b"Ljava/lang/String"), 1);
        assert_eq!(argument_count(b"[["), 1);
    }

    /// The rule as first written, over `str`: the byte reading must agree with it.
    fn reads_via_str(version: &[u8]) -> bool {
        let Ok(version) = std::str::from_utf8(version) else {
            return false;
        };
        let mut number = 0u64;
        let mut parts = 0;
        for part in version.split('.') {
            let Ok(value) = part.parse::<u64>() else {
                return false;
            };
            number = number.wrapping_mul(100).wrapping_add(value.min(99));
            parts += 1;
        }
        if parts == 0 || parts > 4 {
            return false;
        }
        for _ in parts..4 {
            number *= 100;
        }
        (2_000_200..=2_009_900).contains(&number)
    }

    #[test]
    fn version_bytes_read_as_the_str_rule_reads_them() {
        let versions: [&[u8]; 24] = [
            b"2.0.2",
            b"+2.0.+2",
            b"2.0.-2",
            b"2.0.+",
            b"2.0.2.0",
            b"2.0.2.0.0",
            b"1.1.1.1.1.1.1.1.1.1.1.1",
            b"2.0.002",
            b"2.0.99",
            b"2.0.100",
            b"2.0.18446744073709551615",
            b"2.0.18446744073709551616",
            b"2.0.2 ",
            b" 2.0.2",
            b"2.0.2.",
            b".2.0.2",
            b"2",
            b"",
            b".",
            b"2.0.\xff",
            b"2.0.\xd9\xa2",
            b"\xef\xbc\x92.0.2",
            b"2.0.\x00",
            b"2.0.1",
        ];
        for version in versions {
            assert_eq!(
                reads_response_attachments(version),
                reads_via_str(version),
                "{}",
                version.escape_ascii()
            );
        }
    }
}
