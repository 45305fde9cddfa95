//! Golden frames captured from apache/brpc 1.17: decode, passthrough, id rewrite and mutation.

mod common;

use bytes::BytesMut;
use common::{TestResult, decode_one, golden, golden_names, parse, side_of};
use metaprotocol_brpc::{BrpcCodec, RpcMetaView};
use metaprotocol_core::{
    ByteStr, Codec, EncodeParams, Message, MessageKind, Mutation, ResponseStatus, Side, WireVariant,
};

/// brpc 1.17 correlation ids are versioned bthread ids, not small counters.
const GOLDEN_ID: u64 = 4_294_967_298;

/// What an upstream codec reads [`GOLDEN_ID`] (a five-byte varint) as: the engine's id that it
/// writes as `GOLDEN_ID` ([`BrpcCodec`]: `n + 2^28` over five bytes).
const GOLDEN_ENGINE_ID: u64 = GOLDEN_ID - (1 << 28);

/// The request id a codec on `side` reads a golden frame's `correlation_id` as.
fn golden_id(side: Side) -> u64 {
    match side {
        Side::Downstream => GOLDEN_ID,
        Side::Upstream => GOLDEN_ENGINE_ID,
    }
}

struct Expected {
    file: &'static str,
    status: Option<ResponseStatus>,
    metadata: &'static [(&'static str, &'static str)],
    attachment_size: i32,
}

const ECHO: [(&str, &str); 3] = [
    ("service", "example.EchoService"),
    ("method", "Echo"),
    ("log_id", "42"),
];

const EXPECTED: &[Expected] = &[
    Expected {
        file: "lab-attachment.req.hex",
        status: None,
        metadata: &ECHO,
        attachment_size: 23,
    },
    Expected {
        file: "lab-attachment.resp.hex",
        status: Some(ResponseStatus::Ok),
        metadata: &[("server", "brpc-lab")],
        attachment_size: 23,
    },
    Expected {
        file: "lab-error.req.hex",
        status: None,
        metadata: &ECHO,
        attachment_size: 0,
    },
    Expected {
        file: "lab-error.resp.hex",
        status: Some(ResponseStatus::ServerError),
        metadata: &[
            ("server", "brpc-lab"),
            ("error_code", "2001"),
            ("error_text", "[127.0.0.1:18200][E2001]bad name"),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "lab-hello-userfields.req.hex",
        status: None,
        metadata: &[
            ("service", "example.EchoService"),
            ("method", "Echo"),
            ("log_id", "42"),
            ("request_id", "req-7"),
            ("tenant", "t1"),
            ("x-trace-id", "abc123"),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "lab-hello-userfields.resp.hex",
        status: Some(ResponseStatus::Ok),
        metadata: &[
            ("echo-x-trace-id", "abc123"),
            ("server", "brpc-lab"),
            ("echo-tenant", "t1"),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "lab-hello.req.hex",
        status: None,
        metadata: &ECHO,
        attachment_size: 0,
    },
    Expected {
        file: "lab-hello.resp.hex",
        status: Some(ResponseStatus::Ok),
        metadata: &[("server", "brpc-lab")],
        attachment_size: 0,
    },
    Expected {
        file: "lab-nomethod.req.hex",
        status: None,
        metadata: &[
            ("service", "example.MissingService"),
            ("method", "Nope"),
            ("log_id", "42"),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "lab-nomethod.resp.hex",
        status: Some(ResponseStatus::ServerError),
        metadata: &[
            ("error_code", "1002"),
            (
                "error_text",
                "[127.0.0.1:18200][E1002]Fail to find method=example.MissingService/Nope",
            ),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "stock-echo-attachment.req.hex",
        status: None,
        metadata: &[
            ("service", "example.EchoService"),
            ("method", "Echo"),
            ("log_id", "0"),
        ],
        attachment_size: 3,
    },
    Expected {
        file: "stock-echo-attachment.resp.hex",
        status: Some(ResponseStatus::Ok),
        metadata: &[],
        attachment_size: 3,
    },
    Expected {
        file: "stock-echo.req.hex",
        status: None,
        metadata: &[
            ("service", "example.EchoService"),
            ("method", "Echo"),
            ("log_id", "0"),
        ],
        attachment_size: 0,
    },
    Expected {
        file: "stock-echo.resp.hex",
        status: Some(ResponseStatus::Ok),
        metadata: &[],
        attachment_size: 0,
    },
];

/// `message` with request id `id` and `mutation`, as a downstream codec writes it (`id` is the
/// `correlation_id`).
fn encode(
    message: &Message,
    id: u64,
    mutation: &Mutation,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    encode_on(Side::Downstream, message, id, mutation)
}

/// `message` with request id `id` and `mutation`, as a codec on `side` writes it.
fn encode_on(
    side: Side,
    message: &Message,
    id: u64,
    mutation: &Mutation,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut codec = BrpcCodec::new(side, 1 << 20);
    let mut out = BytesMut::from(&b"prefix"[..]);
    let params = EncodeParams {
        request_id: id,
        variant: WireVariant::DEFAULT,
        mutation,
    };
    codec.encode(message, &params, &mut out)?;
    if !out.starts_with(b"prefix") {
        return Err("encode touched bytes before its frame".into());
    }
    let encoded = out.split_off(6).to_vec();
    // Every encode here checks that the write sharing the frame's end agrees.
    let shared = metaprotocol_core::encode_sharing_whole(&mut codec, message, &params)?;
    assert_eq!(shared, encoded, "encode_sharing disagrees with encode");
    Ok(encoded)
}

#[test]
fn every_golden_file_is_covered() -> TestResult {
    let expected: Vec<&str> = EXPECTED.iter().map(|e| e.file).collect();
    assert_eq!(golden_names()?, expected);
    Ok(())
}

#[test]
fn golden_frames_decode_with_expected_metadata() -> TestResult {
    for expected in EXPECTED {
        let bytes = golden(expected.file)?;
        let message = decode_one(side_of(expected.file), &bytes)?;
        let file = expected.file;
        assert_eq!(message.request_id, golden_id(side_of(file)), "{file}");
        assert_eq!(message.reject_reason, None, "{file}");
        match expected.status {
            None => assert_eq!(message.kind, MessageKind::Request, "{file}"),
            Some(status) => {
                assert_eq!(message.kind, MessageKind::Response, "{file}");
                assert_eq!(message.status, status, "{file}");
            }
        }
        let actual: Vec<(&str, &str)> = message.metadata.iter().collect();
        let mut actual_sorted = actual.clone();
        actual_sorted.sort_unstable();
        let mut wanted = expected.metadata.to_vec();
        wanted.sort_unstable();
        assert_eq!(actual_sorted, wanted, "{file}");

        let view = RpcMetaView::from_frame(&message.frame)?;
        assert_eq!(view.attachment_size, expected.attachment_size, "{file}");
        assert_eq!(view.correlation_id, Some(GOLDEN_ID), "{file}");
        assert_eq!(
            (view.compress_type, view.content_type, view.checksum_type),
            (0, 0, 0),
            "{file}"
        );
        assert_eq!(view.checksum_value.as_deref(), Some(&b""[..]), "{file}");
        assert!(!view.has_stream_settings && !view.has_chunk_info, "{file}");
        assert_eq!(view.request.is_some(), expected.status.is_none(), "{file}");
        // The view's strings are places in the frame, read back from it.
        let wanted = |key: &str| message.metadata.get(key);
        let frame = &message.frame[..];
        if let Some(request) = &view.request {
            let service = request.service_name.as_ref().and_then(|t| t.text_in(frame));
            let method = request.method_name.as_ref().and_then(|t| t.text_in(frame));
            assert_eq!(
                (service, method),
                (wanted("service"), wanted("method")),
                "{file}"
            );
        }
        if let Some(response) = &view.response {
            let text = response.error_text.as_ref().and_then(|t| t.text_in(frame));
            assert_eq!(text, wanted("error_text"), "{file}");
        }
        if let Some(server) = wanted("server") {
            assert_eq!(view.user_fields.get("server"), Some(server), "{file}");
        }
        for (key, value) in view.user_fields.iter() {
            assert_eq!(Some(value), wanted(key), "{file}: user field {key}");
        }
    }
    Ok(())
}

#[test]
fn golden_frames_pass_through_byte_identical() -> TestResult {
    for expected in EXPECTED {
        let bytes = golden(expected.file)?;
        let message = decode_one(side_of(expected.file), &bytes)?;
        assert_eq!(
            encode(&message, GOLDEN_ID, &Mutation::new())?,
            bytes,
            "{}",
            expected.file
        );
    }
    Ok(())
}

#[test]
fn id_rewrite_keeps_everything_else() -> TestResult {
    // Same varint length (patched in place), shorter, longer.
    for new_id in [GOLDEN_ID + 77, 7, 300, i64::MAX as u64] {
        for expected in EXPECTED {
            let file = expected.file;
            let bytes = golden(file)?;
            let message = decode_one(side_of(file), &bytes)?;
            let out = encode(&message, new_id, &Mutation::new())?;

            let (mut original, body) = parse(&bytes)?;
            let (rewritten, new_body) = parse(&out)?;
            assert_eq!(new_body, body, "{file}: payload and attachment unchanged");
            assert_eq!(rewritten.correlation_id, Some(new_id as i64), "{file}");
            original.correlation_id = Some(new_id as i64);
            assert_eq!(rewritten, original, "{file}");

            // Read as a downstream codec reads ids: as they are on the wire.
            let again = decode_one(Side::Downstream, &out)?;
            assert_eq!(again.request_id, new_id, "{file}");
            assert_eq!(again.metadata, message.metadata, "{file}");
            if new_id == GOLDEN_ID + 77 {
                let changed = bytes.iter().zip(&out).filter(|(a, b)| a != b).count();
                assert!(
                    out.len() == bytes.len() && changed == 1,
                    "{file}: patched in place"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn upstream_ids_take_the_length_of_the_clients_and_come_back() -> TestResult {
    // Engine ids that fit the golden requests' five-byte ids, and one that does not.
    for engine_id in [1, 300, 1 << 20, (127 << 28) - 1, 1 << 40] {
        for expected in EXPECTED.iter().filter(|e| e.status.is_none()) {
            let file = expected.file;
            let bytes = golden(file)?;
            let request = decode_one(Side::Downstream, &bytes)?;
            let out = encode_on(Side::Upstream, &request, engine_id, &Mutation::new())?;
            let (mut original, body) = parse(&bytes)?;
            let (sent, sent_body) = parse(&out)?;
            assert_eq!(sent_body, body, "{file}: payload and attachment unchanged");
            let wire_id = sent.correlation_id.ok_or("no correlation_id")?;
            original.correlation_id = Some(wire_id);
            assert_eq!(sent, original, "{file}: only the id changed");
            let fits = engine_id < (127 << 28);
            assert_eq!(out.len() == bytes.len(), fits, "{file}: {engine_id}");
            if fits {
                // Patched in place: the bytes that differ all lie in the id's five-byte varint.
                let changed: Vec<usize> =
                    (0..bytes.len()).filter(|&i| bytes[i] != out[i]).collect();
                let span = changed
                    .first()
                    .zip(changed.last())
                    .map_or(0, |(a, b)| b - a + 1);
                assert!(span <= 5, "{file}: {engine_id} patched in place");
            }
            // The server answers under the id it was sent: the upstream codec reads the
            // engine's id back, and a downstream one writes the client's id over it in place.
            let captured = golden("stock-echo.resp.hex")?;
            let answer = decode_one(Side::Downstream, &captured)?;
            let echoed = encode(&answer, wire_id as u64, &Mutation::new())?;
            let response = decode_one(Side::Upstream, &echoed)?;
            assert_eq!(response.request_id, engine_id, "{file}");
            let back = encode(&response, GOLDEN_ID, &Mutation::new())?;
            assert_eq!(back.len() == echoed.len(), fits, "{file}: {engine_id}");
            assert_eq!(
                back, captured,
                "{file}: the client gets the server's answer as it was"
            );
        }
    }
    Ok(())
}

fn mutation(sets: &[(&'static str, &'static str)], removals: &[&'static str]) -> Mutation {
    let mut m = Mutation::new();
    for key in removals {
        m.remove(ByteStr::from_static(key));
    }
    for (k, v) in sets {
        m.set(ByteStr::from_static(k), ByteStr::from_static(v));
    }
    m
}

#[test]
fn mutation_rewrites_user_fields_only() -> TestResult {
    let m = mutation(
        &[("x-routed-by", "canary"), ("tenant", "t2")],
        &["server", "x-trace-id", "absent"],
    );
    for expected in EXPECTED {
        let file = expected.file;
        let bytes = golden(file)?;
        let message = decode_one(side_of(file), &bytes)?;
        for new_id in [GOLDEN_ID, 9] {
            let out = encode(&message, new_id, &m)?;
            let (mut original, body) = parse(&bytes)?;
            let (mutated, new_body) = parse(&out)?;
            assert_eq!(new_body, body, "{file}: payload and attachment unchanged");
            original.user_fields.remove("server");
            original.user_fields.remove("x-trace-id");
            original
                .user_fields
                .insert("x-routed-by".into(), "canary".into());
            original.user_fields.insert("tenant".into(), "t2".into());
            original.correlation_id = Some(new_id as i64);
            assert_eq!(mutated, original, "{file}");

            let again = decode_one(side_of(file), &out)?;
            let mut metadata = message.metadata.clone();
            m.apply_to(&mut metadata);
            for (k, v) in metadata.iter() {
                assert_eq!(again.metadata.get(k), Some(v), "{file}: {k}");
            }
            assert_eq!(again.metadata.len(), metadata.len(), "{file}");
        }
    }
    Ok(())
}

#[test]
fn mutation_keeps_unknown_fields_verbatim() -> TestResult {
    // lab-hello.req plus an unknown field 99 (varint 5) and an unknown string field 100.
    let mut bytes = golden("lab-hello.req.hex")?;
    let unknown = [0x98, 0x06, 0x05, 0xa2, 0x06, 0x02, b'h', b'i'];
    let meta_end = 12 + 45;
    bytes.splice(meta_end..meta_end, unknown);
    bytes[7] += unknown.len() as u8;
    bytes[11] += unknown.len() as u8;
    let message = decode_one(side_of(".req."), &bytes)?;
    let out = encode(&message, 5, &mutation(&[("k", "v")], &[]))?;
    assert!(
        out.windows(unknown.len()).any(|w| w == unknown),
        "unknown fields copied verbatim"
    );
    let (meta, _) = parse(&out)?;
    assert_eq!(meta.user_fields.get("k").map(String::as_str), Some("v"));
    assert_eq!(meta.correlation_id, Some(5));
    Ok(())
}
