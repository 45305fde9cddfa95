//! Every golden capture decodes to what its name says, and re-encodes exactly.

mod common;

use bytes::BytesMut;
use common::{
    Golden, TestResult, all_formats, auto_codec, decode_all, decode_one, encode_checked, goldens,
};
use metaprotocol_core::{
    EncodeParams, Message, MessageKind, Mutation, ResponseStatus, WireVariant,
};
use metaprotocol_thrift::{ApplicationException, INTERNAL_ERROR, ThriftFormat, Transport, stats};

fn get<'a>(message: &'a Message, key: &str) -> Option<&'a str> {
    message.metadata.get(key)
}

fn encode(
    message: &Message,
    request_id: u64,
    variant: WireVariant,
    mutation: &Mutation,
) -> Result<BytesMut, Box<dyn std::error::Error>> {
    let params = EncodeParams {
        request_id,
        variant,
        mutation,
    };
    Ok(encode_checked(message, &params)?)
}

/// The THeader headers the capture carries, as its README lists them.
fn expected_headers(golden: &Golden) -> Vec<(&'static str, &'static str)> {
    match (
        golden.format.transport,
        golden.is_request,
        golden.node_server,
    ) {
        (Transport::Header, true, false) => vec![("x-trace-id", "abc123"), ("tenant", "t1")],
        (Transport::Header, true, true) => vec![("x-trace-id", "abc123")],
        (Transport::Header, false, false) => vec![
            ("echo-x-trace-id", "abc123"),
            ("echo-tenant", "t1"),
            ("server", "thrift-py"),
        ],
        _ => vec![],
    }
}

/// Checks everything the golden's name promises about `message`, with `seqid` expected.
fn check(golden: &Golden, message: &Message, seqid: u64, headers: &[(&str, &str)]) -> TestResult {
    let what = &golden.name;
    assert_eq!(message.request_id, seqid, "{what}");
    assert_eq!(
        ThriftFormat::from_variant(message.variant),
        Some(golden.format),
        "{what}"
    );
    let method = if golden.scenario == "ping" {
        "ping"
    } else {
        "sayHello"
    };
    assert_eq!(get(message, "method"), Some(method), "{what}");
    let service = (golden.multiplexed && golden.is_request).then_some("Greeter");
    assert_eq!(get(message, "service"), service, "{what}");
    let (kind, status) = match (golden.is_request, golden.scenario.as_str()) {
        (true, "ping") => (MessageKind::Oneway, ResponseStatus::Ok),
        (true, _) => (MessageKind::Request, ResponseStatus::Ok),
        (false, "error") => (MessageKind::Response, ResponseStatus::ApplicationError),
        (false, "crash") => (MessageKind::Response, ResponseStatus::ServerError),
        (false, _) => (MessageKind::Response, ResponseStatus::Ok),
    };
    assert_eq!((message.kind, message.status), (kind, status), "{what}");
    for (key, value) in headers {
        assert_eq!(get(message, key), Some(*value), "{what}: header {key}");
    }
    let extra = usize::from(service.is_some());
    assert_eq!(
        message.metadata.len(),
        1 + extra + headers.len(),
        "{what}: {:?}",
        message.metadata
    );
    Ok(())
}

#[test]
fn every_golden_stream_decodes_as_named_and_passes_through_byte_identical() -> TestResult {
    for golden in goldens()? {
        let messages = decode_all(auto_codec().as_mut(), &golden.bytes)?;
        assert_eq!(messages.len(), 1, "{}", golden.name);
        let mut passthrough = BytesMut::new();
        for message in &messages {
            check(&golden, message, 0, &expected_headers(&golden))?;
            assert_eq!(message.reject_reason, None, "{}", golden.name);
            passthrough.extend_from_slice(&encode(
                message,
                message.request_id,
                message.variant,
                &Mutation::new(),
            )?);
        }
        assert_eq!(&passthrough[..], &golden.bytes[..], "{}", golden.name);
    }
    Ok(())
}

#[test]
fn server_exceptions_read_as_internal_errors() -> TestResult {
    for golden in goldens()?
        .iter()
        .filter(|g| g.scenario == "crash" && !g.is_request)
    {
        let exception = ApplicationException::from_message(&decode_one(&golden.bytes)?)?;
        assert_eq!(exception.kind, INTERNAL_ERROR, "{}", golden.name);
        assert_eq!(exception.message, "Internal error", "{}", golden.name);
    }
    Ok(())
}

#[test]
fn seqid_rewrite_changes_only_the_seqid_in_every_format() -> TestResult {
    // 5 and 300 keep and grow the compact varint; i32::MAX takes five bytes.
    for golden in goldens()? {
        let message = decode_one(&golden.bytes)?;
        for id in [5u64, 300, i32::MAX as u64] {
            let out = encode(&message, id, WireVariant::DEFAULT, &Mutation::new())?;
            let again = decode_one(&out)?;
            check(&golden, &again, id, &expected_headers(&golden))?;
            if golden.format.transport == Transport::Header {
                // Python writes the seqid into the THeader seq too: it follows the rewrite.
                assert_eq!(&out[8..12], &(id as u32).to_be_bytes(), "{}", golden.name);
            }
            let back = encode(&again, 0, WireVariant::DEFAULT, &Mutation::new())?;
            assert_eq!(
                &back[..],
                &golden.bytes[..],
                "{}: rewrite back to 0",
                golden.name
            );
        }
    }
    Ok(())
}

#[test]
fn translation_to_every_format_keeps_the_message() -> TestResult {
    for golden in goldens()? {
        let message = decode_one(&golden.bytes)?;
        for target in all_formats() {
            let out = encode(&message, 77, target.to_variant(), &Mutation::new())?;
            let translated = decode_one(&out)?;
            assert_eq!(
                translated.variant,
                target.to_variant(),
                "{} -> {target}",
                golden.name
            );
            let headers = if target.transport == Transport::Header {
                expected_headers(&golden)
            } else {
                vec![]
            };
            let expected = Golden {
                format: target,
                ..golden.clone()
            };
            check(&expected, &translated, 77, &headers)?;
            // And back: the original bytes, unless headers were lost on the way.
            if headers.len() == expected_headers(&golden).len() {
                let back = encode(&translated, 0, golden.format.to_variant(), &Mutation::new())?;
                assert_eq!(
                    &back[..],
                    &golden.bytes[..],
                    "{} -> {target} -> back",
                    golden.name
                );
            }
        }
    }
    Ok(())
}

#[test]
fn translated_exceptions_keep_their_text() -> TestResult {
    for golden in goldens()?
        .iter()
        .filter(|g| g.scenario == "crash" && !g.is_request)
    {
        let message = decode_one(&golden.bytes)?;
        for target in all_formats() {
            let translated =
                decode_one(&encode(&message, 1, target.to_variant(), &Mutation::new())?)?;
            let exception = ApplicationException::from_message(&translated)?;
            assert_eq!(
                (exception.kind, exception.message.as_str()),
                (INTERNAL_ERROR, "Internal error")
            );
        }
    }
    Ok(())
}

#[test]
fn mutation_rewrites_theader_info_headers() -> TestResult {
    let mut mutation = Mutation::new();
    mutation.set("x-routed-by".into(), "canary".into());
    mutation.set("x-trace-id".into(), "replaced".into());
    mutation.remove("tenant".into());
    mutation.remove("server".into());
    for golden in goldens()?
        .iter()
        .filter(|g| g.format.transport == Transport::Header)
    {
        let message = decode_one(&golden.bytes)?;
        let out = encode(&message, 9, WireVariant::DEFAULT, &mutation)?;
        let mutated = decode_one(&out)?;
        let mut expected: Vec<(&str, &str)> = expected_headers(golden)
            .into_iter()
            .filter(|(k, _)| !mutation.overrides(k.as_bytes()))
            .collect();
        expected.extend([("x-routed-by", "canary"), ("x-trace-id", "replaced")]);
        check(golden, &mutated, 9, &expected)?;
        // The message after the header block is the original one, seqid aside.
        let payload = |bytes: &[u8]| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let words = usize::from(u16::from_be_bytes([bytes[12], bytes[13]]));
            Ok(bytes.get(14 + 4 * words..).ok_or("short")?.to_vec())
        };
        let original = encode(&message, 9, WireVariant::DEFAULT, &Mutation::new())?;
        assert_eq!(payload(&out)?, payload(&original)?, "{}", golden.name);
        // Header-less formats get the headers in a mutated THeader translation too.
        for target in all_formats()
            .into_iter()
            .filter(|f| f.transport == Transport::Header)
        {
            let translated = decode_one(&encode(&message, 9, target.to_variant(), &mutation)?)?;
            assert_eq!(
                get(&translated, "x-routed-by"),
                Some("canary"),
                "{} -> {target}",
                golden.name
            );
        }
    }
    Ok(())
}

#[test]
fn mutation_without_headers_forwards_unchanged_and_is_counted() -> TestResult {
    let mut mutation = Mutation::new();
    mutation.set("x-routed-by".into(), "canary".into());
    for golden in goldens()?
        .iter()
        .filter(|g| g.format.transport != Transport::Header)
    {
        let message = decode_one(&golden.bytes)?;
        let before = stats::mutations_not_applied();
        let out = encode(&message, 0, WireVariant::DEFAULT, &mutation)?;
        assert_eq!(&out[..], &golden.bytes[..], "{}", golden.name);
        assert!(stats::mutations_not_applied() > before, "{}", golden.name);
    }
    Ok(())
}

#[test]
fn dropping_theader_headers_is_counted() -> TestResult {
    for golden in goldens()?
        .iter()
        .filter(|g| g.format.transport == Transport::Header && g.is_request)
    {
        let message = decode_one(&golden.bytes)?;
        let before = stats::headers_dropped();
        let target = ThriftFormat::new(Transport::Framed, golden.format.protocol);
        encode(&message, 1, target.to_variant(), &Mutation::new())?;
        assert!(stats::headers_dropped() > before, "{}", golden.name);
    }
    Ok(())
}

/// A lax binary message (no version word: what a `TBinaryProtocol` with `strictWrite=False`
/// sends) is written strict: a server reading strictly (`strictRead=True`, as many Java and
/// C++ servers are set up) refuses a lax call by closing the connection, which other clients'
/// calls share, and every binary reader takes a strict one. Name, type, seqid (rewritten) and
/// struct stay, framed and unframed, in the same protocol and into THeader.
#[test]
fn lax_binary_messages_are_written_strict() -> TestResult {
    // `sayHello("bob")`, seqid 77, as Apache Thrift's Python library writes it lax.
    let lax = hex::decode("0000000873617948656c6c6f010000004d0b000100000003626f6200")?;
    let strict = hex::decode("800100010000000873617948656c6c6f0000004d0b000100000003626f6200")?;
    let with_seqid = |message: &[u8], seqid: u32| {
        let mut message = message.to_vec();
        let at = message.len() - 15;
        message[at..at + 4].copy_from_slice(&seqid.to_be_bytes());
        message
    };
    let framed = |message: &[u8]| [&(message.len() as u32).to_be_bytes()[..], message].concat();
    for (transport, input) in [
        (Transport::Unframed, lax.clone()),
        (Transport::Framed, framed(&lax)),
    ] {
        let message = decode_one(&input)?;
        assert_eq!(
            (message.request_id, get(&message, "method")),
            (77, Some("sayHello"))
        );
        for seqid in [77, 9] {
            let out = encode(
                &message,
                u64::from(seqid),
                WireVariant::DEFAULT,
                &Mutation::new(),
            )?;
            let expected = with_seqid(&strict, seqid);
            let expected = match transport {
                Transport::Framed => framed(&expected),
                _ => expected,
            };
            assert_eq!(
                hex::encode(&out),
                hex::encode(&expected),
                "{transport:?} {seqid}"
            );
        }
        let theader = ThriftFormat::new(Transport::Header, metaprotocol_thrift::Protocol::Binary);
        let out = encode(&message, 9, theader.to_variant(), &Mutation::new())?;
        assert!(
            out.ends_with(&with_seqid(&strict, 9)),
            "{transport:?} into THeader: {}",
            hex::encode(&out)
        );
    }
    Ok(())
}
