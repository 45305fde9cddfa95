//! Building Dubbo2 frames with Hessian2 bodies, for clients, providers and tests written on top
//! of this crate (the proxy itself never builds calls; it forwards them).
//!
//! ```
//! use metaprotocol_dubbo::build::{request, value_response, Call};
//!
//! let call = Call {
//!     service: "org.apache.dubbo.samples.basic.api.DemoService",
//!     version: "1.0.0",
//!     method: "sayHello",
//!     string_args: &["world"],
//!     attachments: &[("tenant", "t1")],
//! };
//! let frame = request(7, true, &call);
//! assert_eq!(&frame[..2], &[0xda, 0xbb]);
//! let answer = value_response(7, "Hello, world", &[("provider", "p1")]);
//! assert_eq!(answer[3], metaprotocol_dubbo::status::OK);
//!
//! // The same call as a `Message`, ready for the engine's clients, and the answer read back.
//! let message = metaprotocol_dubbo::build::request_message(&call)?;
//! assert_eq!(message.metadata.get("method"), Some("sayHello"));
//! let body = metaprotocol_dubbo::build::response_body(&answer)?;
//! assert_eq!(body, metaprotocol_dubbo::build::ResponseBody::Value("Hello, world".into()));
//! # Ok::<(), metaprotocol_core::CodecError>(())
//! ```
//!
//! Failures come in two kinds: [`exception_response`] (status 20 carrying an exception, a
//! declared business-level failure) and [`error_response`] (another status, the framework's).

use bytes::{BufMut, Bytes, BytesMut};
use metaprotocol_core::{Codec, CodecError, DEFAULT_MAX_FRAME_BYTES, Message};

use crate::DubboCodec;
use crate::header::{FLAG_EVENT, FLAG_REQUEST, FLAG_TWO_WAY, HEADER_LEN, Header, patch_body_len};
use crate::hessian::reader::Reader;
use crate::hessian::writer::write_string;
use crate::hessian::{CLASS_DEF, END, NULL, UNTYPED_MAP, compact_int};
use crate::response::ResultFlag;
use crate::serialization::HESSIAN2;
use crate::status;

/// The Dubbo protocol version written in calls: the one whose clients read response
/// attachments.
pub const DUBBO_PROTOCOL_VERSION: &str = "2.0.2";
/// Result flag of a value followed by attachments.
const VALUE_WITH_ATTACHMENTS: u8 = 4;
/// Result flag of an exception followed by attachments.
const EXCEPTION_WITH_ATTACHMENTS: u8 = 3;
/// An object of the first class definition (`0x60 + definition`, for definitions 0..=15).
const OBJECT_OF_FIRST_DEFINITION: u8 = 0x60;

/// A call of a method whose parameters are all `java.lang.String`.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The interface (service path).
    pub service: &'a str,
    /// The service version.
    pub version: &'a str,
    /// The method.
    pub method: &'a str,
    /// The arguments.
    pub string_args: &'a [&'a str],
    /// The attachments, after `path`, `interface` and `version`, which are always sent.
    pub attachments: &'a [(&'a str, &'a str)],
}

/// A request frame (two-way or one-way) with id `id`.
pub fn request(id: u64, two_way: bool, call: &Call<'_>) -> Bytes {
    let mut out = BytesMut::new();
    let flag = FLAG_REQUEST | HESSIAN2 | if two_way { FLAG_TWO_WAY } else { 0 };
    Header::put(&mut out, flag, 0, id);
    for field in [
        DUBBO_PROTOCOL_VERSION,
        call.service,
        call.version,
        call.method,
    ] {
        write_string(&mut out, &[field]);
    }
    let descriptor: Vec<&str> = call
        .string_args
        .iter()
        .map(|_| "Ljava/lang/String;")
        .collect();
    write_string(&mut out, &descriptor);
    for arg in call.string_args {
        write_string(&mut out, &[arg]);
    }
    let implicit = [
        ("path", call.service),
        ("interface", call.service),
        ("version", call.version),
    ];
    put_map(&mut out, implicit.iter().chain(call.attachments));
    finish(out)
}

/// A two-way request `Message` of `call`, as the Dubbo codec decodes it: what the engine's
/// clients (`metaprotocol_router::RouterClient`, `Client`) send. Its request id is 0; the
/// engine gives every call a fresh one on the wire.
pub fn request_message(call: &Call<'_>) -> Result<Message, CodecError> {
    let frame = request(0, true, call);
    let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES.max(frame.len()));
    codec
        .decode(&mut BytesMut::from(&frame[..]))?
        .ok_or(CodecError::malformed("a built request did not decode"))
}

/// What a response body says, as far as calls of [`Call`]'s kind (strings in, a string out)
/// need it. More kinds of results may come, so matches need a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseBody {
    /// Status 20 with a string result.
    Value(String),
    /// Status 20 with a null result.
    Null,
    /// Status 20 with an exception the service threw (a Java object, not read further).
    Exception,
    /// Another status, with the error message the server sent.
    Error {
        /// The Dubbo status (`crate::status`).
        status: u8,
        /// The message.
        message: String,
    },
}

/// Reads the body of a response frame: its status and its string result or error message. A
/// result of another type than a string is `Unsupported`.
pub fn response_body(frame: &[u8]) -> Result<ResponseBody, CodecError> {
    let status = *frame
        .get(3)
        .ok_or(CodecError::malformed("truncated Dubbo header"))?;
    let mut reader = Reader::new(frame, HEADER_LEN);
    let text = |reader: &mut Reader<'_>| -> Result<Option<String>, CodecError> {
        Ok(reader
            .string()?
            .map(|s| String::from_utf8_lossy(s.raw(frame)).into_owned()))
    };
    if status != status::OK {
        let message = text(&mut reader).ok().flatten().unwrap_or_default();
        return Ok(ResponseBody::Error { status, message });
    }
    match ResultFlag::read(&mut reader)?.value() {
        0 | 3 => Ok(ResponseBody::Exception),
        2 | 5 => Ok(ResponseBody::Null),
        _ if reader
            .peek()
            .is_some_and(crate::hessian::reader::is_string_tag) =>
        {
            Ok(text(&mut reader)?.map_or(ResponseBody::Null, ResponseBody::Value))
        }
        _ => Err(CodecError::Unsupported("the result is not a string".into())),
    }
}

/// A two-way heartbeat with id `id`: an event request whose body is the Hessian2 null, which
/// every Dubbo provider answers with an event response of the same id.
pub fn heartbeat(id: u64) -> Bytes {
    let mut out = BytesMut::new();
    Header::put(
        &mut out,
        FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2,
        0,
        id,
    );
    out.put_u8(NULL);
    finish(out)
}

/// A successful response (status 20) carrying a string `value` and `attachments`.
pub fn value_response(id: u64, value: &str, attachments: &[(&str, &str)]) -> Bytes {
    let mut out = BytesMut::new();
    Header::put(&mut out, HESSIAN2, status::OK, id);
    out.put_u8(compact_int(VALUE_WITH_ATTACHMENTS));
    write_string(&mut out, &[value]);
    put_map(&mut out, attachments.iter());
    finish(out)
}

/// A response (status 20) whose result is an exception of Java class `class` with `message`
/// (its `detailMessage`), then `attachments`: what a service's declared exception looks like.
pub fn exception_response(
    id: u64,
    class: &str,
    message: &str,
    attachments: &[(&str, &str)],
) -> Bytes {
    let mut out = BytesMut::new();
    Header::put(&mut out, HESSIAN2, status::OK, id);
    out.put_u8(compact_int(EXCEPTION_WITH_ATTACHMENTS));
    out.put_u8(CLASS_DEF);
    write_string(&mut out, &[class]);
    out.put_u8(compact_int(1));
    write_string(&mut out, &["detailMessage"]);
    out.put_u8(OBJECT_OF_FIRST_DEFINITION);
    write_string(&mut out, &[message]);
    put_map(&mut out, attachments.iter());
    finish(out)
}

/// A response with `status` (not [`status::OK`]) and its error `message`: the server or its
/// framework failed the call.
pub fn error_response(id: u64, status: u8, message: &str) -> Bytes {
    let mut out = BytesMut::new();
    Header::put(&mut out, HESSIAN2, status, id);
    write_string(&mut out, &[message]);
    finish(out)
}

fn put_map<'a>(out: &mut BytesMut, entries: impl Iterator<Item = &'a (&'a str, &'a str)>) {
    out.put_u8(UNTYPED_MAP);
    for (key, value) in entries {
        write_string(out, &[key]);
        write_string(out, &[value]);
    }
    out.put_u8(END);
}

fn finish(mut out: BytesMut) -> Bytes {
    // A frame built here is as large as its caller's strings; no cap applies.
    let _ = patch_body_len(&mut out, 0, usize::MAX);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use metaprotocol_core::{Codec, MessageKind, ResponseStatus};

    use super::*;
    use crate::DubboCodec;

    #[test]
    fn built_frames_decode_to_what_was_built() -> Result<(), Box<dyn std::error::Error>> {
        let call = Call {
            service: "demo.Greeter",
            version: "1.0.0",
            method: "greet",
            string_args: &["a", "b😀"],
            attachments: &[("tenant", "t1")],
        };
        let mut codec = DubboCodec::new(1 << 20);
        let mut buf = BytesMut::from(&request(9, false, &call)[..]);
        let message = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(message.kind, MessageKind::Oneway);
        assert_eq!(message.request_id, 9);
        let get = |k: &str| message.metadata.get(k).map(|v| v.to_string());
        assert_eq!(get("interface").as_deref(), Some("demo.Greeter"));
        assert_eq!(get("method").as_deref(), Some("greet"));
        assert_eq!(get("tenant").as_deref(), Some("t1"));
        assert_eq!(message.variant, crate::READS_RESPONSE_ATTACHMENTS);

        let built = request_message(&call)?;
        assert_eq!(built.kind, MessageKind::Request);
        assert_eq!(built.metadata.get("tenant"), Some("t1"));

        assert_eq!(
            response_body(&value_response(9, "hi", &[]))?,
            ResponseBody::Value("hi".into())
        );
        let mut error = BytesMut::new();
        let reply = metaprotocol_core::LocalReply::new(
            metaprotocol_core::LocalReplyKind::Timeout,
            "too slow",
        );
        codec.encode_local_reply(&message, &reply, &mut error)?;
        assert_eq!(
            response_body(&error)?,
            ResponseBody::Error {
                status: status::SERVER_TIMEOUT,
                message: "timeout: too slow".into()
            }
        );

        let mut buf = BytesMut::from(&heartbeat(3)[..]);
        let ping = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!((ping.kind, ping.request_id), (MessageKind::Heartbeat, 3));

        let mut buf = BytesMut::from(&value_response(9, "hi", &[("p", "1")])[..]);
        let response = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(response.kind, MessageKind::Response);
        assert_eq!(
            response.metadata.get("p").map(|v| v.to_string()).as_deref(),
            Some("1")
        );

        let exception = exception_response(9, "demo.GreetError", "bad name", &[("p", "2")]);
        let mut buf = BytesMut::from(&exception[..]);
        let response = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(response.status, ResponseStatus::ApplicationError);
        assert_eq!(
            response.metadata.get("p").map(|v| v.to_string()).as_deref(),
            Some("2")
        );
        let mut buf = BytesMut::from(&error_response(9, status::SERVICE_ERROR, "boom")[..]);
        let response = codec.decode(&mut buf)?.ok_or("incomplete")?;
        assert_eq!(response.status, ResponseStatus::ServerError);
        Ok(())
    }
}
