//! Local replies decode, by the protobuf definition, to brpc error responses a client understands.

mod common;

use bytes::BytesMut;
use common::{TestResult, decode_one, echo_request, frame, golden, parse};
use metaprotocol_brpc::{BrpcCodec, errno, error_code};
use metaprotocol_core::{Codec, LocalReply, LocalReplyKind, MessageKind, ResponseStatus, Side};

#[test]
fn every_kind_maps_to_its_brpc_code() {
    let expected = [
        (LocalReplyKind::RouteNotFound, 1002),
        (LocalReplyKind::NoHealthyUpstream, 112),
        (LocalReplyKind::Unavailable, 2004),
        (LocalReplyKind::OverLimit, 2004),
        (LocalReplyKind::Unauthorized, 1004),
        (LocalReplyKind::Timeout, 1008),
        (LocalReplyKind::UpstreamReset, 1009),
        (LocalReplyKind::UpstreamConnectFailure, 1009),
        (LocalReplyKind::FaultAbort, 2001),
        (LocalReplyKind::BadRequest, 1003),
        (LocalReplyKind::Internal, 2001),
    ];
    assert_eq!(expected.len(), LocalReplyKind::ALL.len());
    for (kind, code) in expected {
        assert_eq!(error_code(kind), code, "{kind}");
    }
    assert_eq!(errno::ERPCTIMEDOUT, 1008);
    for code in [errno::ELIMIT, errno::EOVERCROWDED, errno::ELOGOFF] {
        assert!(errno::is_not_processed(code), "{code}");
    }
    for code in [
        errno::EINTERNAL,
        errno::ERPCTIMEDOUT,
        errno::EFAILEDSOCKET,
        0,
    ] {
        assert!(!errno::is_not_processed(code), "{code}");
    }
}

#[test]
fn local_reply_answers_the_request_with_code_text_and_id() -> TestResult {
    let request = decode_one(Side::Downstream, &golden("lab-hello-userfields.req.hex")?)?;
    for kind in LocalReplyKind::ALL {
        let mut codec = BrpcCodec::new(Side::Downstream, 1 << 20);
        let mut out = BytesMut::new();
        let reply = LocalReply::new(kind, "metaprotocol-proxy: it failed");
        codec.encode_local_reply(&request, &reply, &mut out)?;

        let (meta, body) = parse(&out)?;
        assert!(body.is_empty(), "{kind}: no payload");
        assert_eq!(meta.correlation_id, Some(4_294_967_298), "{kind}");
        assert_eq!(meta.compress_type, Some(0), "{kind}");
        assert_eq!(meta.request, None, "{kind}");
        assert!(meta.user_fields.is_empty(), "{kind}");
        let response = meta.response.ok_or("no response meta")?;
        assert_eq!(response.error_code, Some(error_code(kind)), "{kind}");
        assert_eq!(
            response.error_text.as_deref(),
            Some(
                format!(
                    "[metaprotocol-proxy][E{}] {kind}: it failed",
                    error_code(kind)
                )
                .as_str()
            ),
        );

        // The upstream half of the codec reads it back as a failed response (under the id an
        // upstream codec reads a five-byte `correlation_id` n as: n - 2^28).
        let decoded = decode_one(Side::Upstream, &out)?;
        assert_eq!(decoded.kind, MessageKind::Response);
        assert_eq!(decoded.status, ResponseStatus::ServerError);
        assert_eq!(decoded.request_id, 4_294_967_298 - (1 << 28));
        // ELIMIT (a refusal to run the call) may be retried whatever the method does.
        assert_eq!(
            decoded.not_processed,
            error_code(kind) == errno::ELIMIT,
            "{kind}"
        );
    }
    Ok(())
}

#[test]
fn local_reply_to_a_request_without_request_meta() -> TestResult {
    let mut meta = echo_request(-3);
    meta.request = None;
    let request = decode_one(Side::Downstream, &frame(&meta, b"")?)?;
    assert_eq!(
        request.reject_reason,
        Some("RpcMeta carries no request meta")
    );
    let mut out = BytesMut::new();
    let reply = LocalReply::new(
        LocalReplyKind::BadRequest,
        "RpcMeta carries no request meta",
    );
    BrpcCodec::new(Side::Downstream, 64).encode_local_reply(&request, &reply, &mut out)?;
    let (meta, _) = parse(&out)?;
    assert_eq!(
        meta.correlation_id,
        Some(-3),
        "the id's bit pattern is kept"
    );
    let response = meta.response.ok_or("no response meta")?;
    assert_eq!(response.error_code, Some(errno::EREQUEST));
    assert_eq!(
        response.error_text.as_deref(),
        Some("[metaprotocol-proxy][E1003] bad_request: RpcMeta carries no request meta")
    );
    Ok(())
}
