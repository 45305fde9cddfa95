//! Local replies are TApplicationExceptions in the request's own encoding.

mod common;

use bytes::BytesMut;
use common::{TestResult, all_formats, auto_codec, decode_one, goldens};
use metaprotocol_core::{
    EncodeParams, LocalReply, LocalReplyKind, MessageKind, Mutation, ResponseStatus,
};
use metaprotocol_thrift::{
    ApplicationException, INTERNAL_ERROR, LOADSHEDDING, PROTOCOL_ERROR, Transport, UNKNOWN_METHOD,
};

#[test]
fn local_replies_answer_in_the_requests_format_with_its_seqid() -> TestResult {
    let requests = goldens()?
        .into_iter()
        .filter(|g| g.is_request && g.scenario != "ping");
    for golden in requests {
        let original = decode_one(&golden.bytes)?;
        for target in all_formats() {
            // A request as it would arrive in `target`, with a seqid of its own.
            let mut bytes = BytesMut::new();
            let params = EncodeParams {
                request_id: 4242,
                variant: target.to_variant(),
                mutation: &Mutation::new(),
            };
            auto_codec().encode(&original, &params, &mut bytes)?;
            let request = decode_one(&bytes)?;
            for (kind, code) in [
                (LocalReplyKind::RouteNotFound, UNKNOWN_METHOD),
                (LocalReplyKind::Timeout, INTERNAL_ERROR),
                (LocalReplyKind::OverLimit, LOADSHEDDING),
                (LocalReplyKind::BadRequest, PROTOCOL_ERROR),
                (LocalReplyKind::Internal, INTERNAL_ERROR),
            ] {
                let reply = LocalReply::new(kind, "no route for sayHello");
                let mut out = BytesMut::new();
                auto_codec().encode_local_reply(&request, &reply, &mut out)?;
                let answer = decode_one(&out)?;
                let what = format!("{} as {target}, {kind}", golden.name);
                assert_eq!(answer.variant, request.variant, "{what}");
                assert_eq!(answer.kind, MessageKind::Response, "{what}");
                assert_eq!(answer.status, ResponseStatus::ServerError, "{what}");
                // A call refused over a limit was shed unrun: a proxy before this one may
                // send it elsewhere.
                assert_eq!(
                    answer.not_processed,
                    code == LOADSHEDDING,
                    "{what}: only a shed call is safe to retry"
                );
                assert_eq!(answer.request_id, 4242, "{what}");
                assert_eq!(answer.metadata.get("method"), Some("sayHello"));
                // The method name of a multiplexed call comes back without its service.
                assert_eq!(answer.metadata.get("service"), None, "{what}");
                let exception = ApplicationException::from_message(&answer)?;
                assert_eq!(exception.kind, code, "{what}");
                assert_eq!(
                    exception.message,
                    format!("{kind}: no route for sayHello"),
                    "{what}"
                );
                if target.transport == Transport::Header {
                    assert_eq!(&out[8..12], &4242u32.to_be_bytes(), "{what}: THeader seq");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn one_way_requests_get_no_reply() -> TestResult {
    for golden in goldens()?.into_iter().filter(|g| g.scenario == "ping") {
        let request = decode_one(&golden.bytes)?;
        let mut out = BytesMut::from(&b"kept"[..]);
        let reply = LocalReply::new(LocalReplyKind::RouteNotFound, "none");
        auto_codec().encode_local_reply(&request, &reply, &mut out)?;
        assert_eq!(&out[..], b"kept", "{}", golden.name);
    }
    Ok(())
}

/// A strict-binary `EXCEPTION` message for `sayHello` carrying a `TApplicationException` of
/// type `kind`, framed when `framed`.
fn exception_message(kind: i32, framed: bool) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend_from_slice(&0x8001_0003u32.to_be_bytes());
    message.extend_from_slice(&8u32.to_be_bytes());
    message.extend_from_slice(b"sayHello");
    message.extend_from_slice(&7u32.to_be_bytes());
    // 1: string message
    message.extend_from_slice(&[11, 0, 1]);
    message.extend_from_slice(&4u32.to_be_bytes());
    message.extend_from_slice(b"shed");
    // 2: i32 type
    message.extend_from_slice(&[8, 0, 2]);
    message.extend_from_slice(&kind.to_be_bytes());
    message.push(0);
    if !framed {
        return message;
    }
    let mut frame = (message.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&message);
    frame
}

#[test]
fn a_shed_call_is_marked_not_processed() -> TestResult {
    for framed in [true, false] {
        let shed = decode_one(&exception_message(LOADSHEDDING, framed))?;
        assert_eq!(shed.status, ResponseStatus::ServerError);
        assert!(shed.not_processed, "framed: {framed}");
        assert_eq!(ApplicationException::from_message(&shed)?.message, "shed");
        let failed = decode_one(&exception_message(INTERNAL_ERROR, framed))?;
        assert!(!failed.not_processed, "framed: {framed}");
    }
    Ok(())
}
