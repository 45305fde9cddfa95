//! Local replies: the proxy's own errors as brpc error responses, with brpc's error codes.

use bytes::BytesMut;
use metaprotocol_core::{CodecError, LocalReply, LocalReplyKind, Message};

use crate::frame::encode_frame;
use crate::proto;

/// The brpc error codes the proxy answers with (brpc's `errno.proto`, and one system errno).
pub mod errno {
    /// `ENOSERVICE`: service not found.
    pub const ENOSERVICE: i32 = 1001;
    /// `ENOMETHOD`: method not found. brpc itself answers a call to an unknown fully qualified
    /// service with it, so the proxy does too when no route matches.
    pub const ENOMETHOD: i32 = 1002;
    /// `EREQUEST`: bad request.
    pub const EREQUEST: i32 = 1003;
    /// `ERPCAUTH`: unauthorized.
    pub const ERPCAUTH: i32 = 1004;
    /// `ERPCTIMEDOUT`: the RPC timed out.
    pub const ERPCTIMEDOUT: i32 = 1008;
    /// `EFAILEDSOCKET`: the connection broke (brpc clients retry it, as they would talking
    /// directly to the server).
    pub const EFAILEDSOCKET: i32 = 1009;
    /// `EINTERNAL`: internal server error.
    pub const EINTERNAL: i32 = 2001;
    /// `ELIMIT`: the server reached its limit on resources (brpc clients retry it).
    pub const ELIMIT: i32 = 2004;
    /// `EOVERCROWDED`: the server is overcrowded (brpc clients retry it).
    pub const EOVERCROWDED: i32 = 1011;
    /// `ELOGOFF`: the server is stopping (brpc clients retry it).
    pub const ELOGOFF: i32 = 2003;

    /// True for the codes by which a server refuses a call without running it (`ELIMIT`,
    /// `EOVERCROWDED`, `ELOGOFF`): another server may take it, whatever the method does.
    pub fn is_not_processed(code: i32) -> bool {
        matches!(code, ELIMIT | EOVERCROWDED | ELOGOFF)
    }
    /// The Linux `EHOSTDOWN`, which brpc clients report when their load balancer finds no
    /// server ("Host is down") and retry.
    pub const EHOSTDOWN: i32 = 112;
}

/// The brpc error code for a local reply of `kind`.
///
/// | kind | code |
/// |---|---|
/// | `route_not_found` | `ENOMETHOD` 1002 |
/// | `no_healthy_upstream` | `EHOSTDOWN` 112 |
/// | `unavailable`, `over_limit` | `ELIMIT` 2004 |
/// | `unauthorized` | `ERPCAUTH` 1004 |
/// | `timeout` | `ERPCTIMEDOUT` 1008 |
/// | `upstream_reset`, `upstream_connect_failure` | `EFAILEDSOCKET` 1009 |
/// | `bad_request` | `EREQUEST` 1003 |
/// | `fault_abort`, `internal`, others | `EINTERNAL` 2001 |
pub fn error_code(kind: LocalReplyKind) -> i32 {
    match kind {
        LocalReplyKind::RouteNotFound => errno::ENOMETHOD,
        LocalReplyKind::NoHealthyUpstream => errno::EHOSTDOWN,
        LocalReplyKind::Unavailable | LocalReplyKind::OverLimit => errno::ELIMIT,
        LocalReplyKind::Unauthorized => errno::ERPCAUTH,
        LocalReplyKind::Timeout => errno::ERPCTIMEDOUT,
        LocalReplyKind::UpstreamReset | LocalReplyKind::UpstreamConnectFailure => {
            errno::EFAILEDSOCKET
        }
        LocalReplyKind::BadRequest => errno::EREQUEST,
        _ => errno::EINTERNAL,
    }
}

/// Appends the error response to `request` for `reply`: a response meta with the brpc error
/// code, a readable `error_text` naming the proxy, the code, the kind and the message, and the
/// request's `correlation_id`; no payload.
pub(crate) fn encode_local_reply(
    request: &Message,
    reply: &LocalReply,
    dst: &mut BytesMut,
) -> Result<(), CodecError> {
    let code = error_code(reply.kind);
    // brpc's own texts read "[server address][E<code>]text"; the engine's messages already
    // name the proxy, which the bracket now does.
    let message = reply
        .message
        .strip_prefix("metaprotocol-proxy: ")
        .unwrap_or(&reply.message);
    let text = format!("[metaprotocol-proxy][E{code}] {}: {message}", reply.kind);
    let meta = proto::RpcMeta {
        response: Some(proto::RpcResponseMeta {
            error_code: Some(code),
            error_text: Some(text),
        }),
        compress_type: Some(0),
        // brpc pairs the reply by the id's bit pattern; int64 is its wire type.
        correlation_id: Some(request.request_id as i64),
        ..proto::RpcMeta::default()
    };
    encode_frame(&meta, &[], dst)
}
