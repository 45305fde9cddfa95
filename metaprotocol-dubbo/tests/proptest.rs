//! Properties: incremental decoding is split-invariant, decoding never panics, the skipper
//! steps over any generated Hessian2 value to exactly its end, and mutations compose.

mod common;

use bytes::BytesMut;
use common::hessian::{Value, Writer, request_body};
use common::{codec, decode_one, encode, frame, golden_files, meta};
use metaprotocol_core::{ByteStr, Codec, Message, Mutation};
use proptest::prelude::*;

/// Every golden stream, back to back.
fn golden_stream() -> Vec<u8> {
    golden_files()
        .map(|files| files.into_iter().flat_map(|f| f.bytes).collect())
        .unwrap_or_default()
}

/// What two decodings of the same frame must agree on.
fn summary(message: &Message) -> (String, u64, String, String, Vec<u8>) {
    (
        format!("{:?}", message.kind),
        message.request_id,
        format!("{:?}", message.status),
        format!("{:?}", message.metadata),
        message.frame.to_vec(),
    )
}

/// Feeds `stream` to one codec in pieces cut at `cuts`, collecting every message.
fn decode_in_pieces(
    stream: &[u8],
    cuts: &[usize],
) -> Result<Vec<Message>, metaprotocol_core::CodecError> {
    let mut codec = codec();
    let mut src = BytesMut::new();
    let mut messages = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut fed = 0;
    for point in points {
        src.extend_from_slice(&stream[fed..point]);
        fed = point;
        while let Some(message) = codec.decode(&mut src)? {
            messages.push(message);
        }
    }
    assert!(src.is_empty(), "{} bytes left", src.len());
    Ok(messages)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._-]{0,12}", ".{0,40}", "[a-zé€😀]{30,1100}",]
}

fn type_name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("[int".to_owned())),
        Just(Some("java.util.ArrayList".to_owned())),
        "[a-z.]{1,20}".prop_map(Some),
    ]
}

fn hessian_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int),
        (-300i32..300).prop_map(Value::Int),
        any::<i64>().prop_map(Value::Long),
        (-300_000i64..300_000).prop_map(Value::Long),
        any::<f64>().prop_map(Value::Double),
        prop_oneof![Just(0.0), Just(1.0), Just(-7.0), Just(1000.0), Just(0.5)]
            .prop_map(Value::Double),
        any::<i64>().prop_map(Value::Date),
        any::<i32>().prop_map(Value::DateMinutes),
        text().prop_map(Value::Str),
        prop::collection::vec("[a-z😀]{1,20}", 1..4).prop_map(Value::ChunkedStr),
        prop::collection::vec(any::<u8>(), 0..1100).prop_map(Value::Binary),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..20), 1..4)
            .prop_map(Value::ChunkedBinary),
        (0u32..4).prop_map(Value::Ref),
    ];
    leaf.prop_recursive(4, 48, 10, |inner| {
        prop_oneof![
            (
                type_name(),
                any::<bool>(),
                prop::collection::vec(inner.clone(), 0..10)
            )
                .prop_map(|(type_name, fixed, items)| Value::List {
                    type_name,
                    fixed,
                    items
                }),
            (
                type_name(),
                prop::collection::vec((inner.clone(), inner.clone()), 0..5)
            )
                .prop_map(|(type_name, entries)| Value::Map { type_name, entries }),
            (0usize..3, prop::collection::vec(inner, 3)).prop_map(|(class, mut fields)| {
                // Objects of one class share a field count.
                fields.truncate(class + 1);
                Value::Object {
                    class: format!("demo.Class{class}"),
                    fields,
                }
            }),
        ]
    })
}

fn attachment_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z-]{1,10}", text()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_decodes_the_same_messages(cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let stream = golden_stream();
        prop_assert!(stream.len() > 4000);
        let whole: Vec<_> = decode_in_pieces(&stream, &[]).map_err(|e| TestCaseError::fail(e.to_string()))?
            .iter().map(summary).collect();
        let pieces: Vec<_> = decode_in_pieces(&stream, &cuts).map_err(|e| TestCaseError::fail(e.to_string()))?
            .iter().map(summary).collect();
        prop_assert_eq!(whole.len(), 28);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut src = BytesMut::from(&bytes[..]);
        let mut codec = codec();
        while let Ok(Some(message)) = codec.decode(&mut src) {
            let _ = encode(&message, 1, &Mutation::new());
        }
    }

    #[test]
    fn decode_and_reencode_never_panic_on_arbitrary_bodies(
        flag in prop_oneof![Just(0xc2u8), Just(0x82), Just(0x02), Just(0xe2), Just(0x22), any::<u8>()],
        status in prop_oneof![Just(20u8), any::<u8>()],
        body in prop::collection::vec(prop_oneof![any::<u8>(), Just(b'H'), Just(b'Z'), Just(b'C'), Just(0x60), Just(0x57)], 0..300),
    ) {
        let bytes = frame(flag, status, 9, &body);
        let mut src = BytesMut::from(&bytes[..]);
        if let Ok(Some(message)) = codec().decode(&mut src) {
            let edit = common::mutation(&[("k", "v")], &["tenant"]);
            if let Ok(mutated) = encode(&message, 3, &edit) {
                let again = decode_one(&mutated).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(again.request_id, 3);
                if message.layout.0[0] != 0 {
                    prop_assert_eq!(meta(&again, "k"), Some("v"));
                }
            }
        }
    }

    #[test]
    fn the_skipper_stops_exactly_at_the_end_of_any_value(args in prop::collection::vec(hessian_value(), 0..4)) {
        let descriptor = "Ljava/lang/Object;".repeat(args.len());
        let body = request_body("demo.Api", "call", &descriptor, &args, Some(&[("marker", "end")]));
        let mut head = Writer::new();
        head.string("2.0.2").string("demo.Api").string("1.0.0").string("call").string(&descriptor);
        let map_at = 16 + body.len() - 13; // H 06 marker 03 end Z
        let message = decode_one(&frame(0xc2, 0, 1, &body)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(meta(&message, "marker"), Some("end"));
        prop_assert_eq!(message.layout.0[2] as usize, map_at);
        prop_assert!(map_at >= 16 + head.out.len());

        // The arguments survive a rewrite untouched, whatever they hold.
        let rewritten = encode(&message, 1, &common::mutation(&[("x", "y")], &["marker"]))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&rewritten[16..map_at], &body[..map_at - 16]);
        let again = decode_one(&rewritten).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(meta(&again, "marker"), None);
        prop_assert_eq!(meta(&again, "x"), Some("y"));
    }

    #[test]
    fn mutations_match_applying_them_to_metadata(
        original in attachment_pairs(),
        sets in attachment_pairs(),
        removals in prop::collection::vec("[a-z-]{1,10}", 0..4),
    ) {
        let pairs: Vec<(&str, &str)> = original.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let body = request_body("demo.Api", "call", "J", &[Value::Long(5)], Some(&pairs));
        let message = decode_one(&frame(0xc2, 0, 1, &body)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut mutation = Mutation::new();
        for key in &removals {
            mutation.remove(ByteStr::from(key.clone()));
        }
        for (key, value) in &sets {
            mutation.set(ByteStr::from(key.clone()), ByteStr::from(value.clone()));
        }
        let mut expected = message.metadata.clone();
        mutation.apply_to(&mut expected);
        let mutated = decode_one(&encode(&message, 1, &mutation).map_err(|e| TestCaseError::fail(e.to_string()))?)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The call fields win over attachments of the same name, as in decode.
        for (key, value) in expected.iter() {
            let reserved = ["interface", "service", "method"].contains(&key)
                || (key == "version" && value.is_empty());
            if !reserved {
                prop_assert_eq!(mutated.metadata.get(key), Some(value), "{}", key);
            }
        }
        for key in mutation.removals() {
            if !mutation.sets().iter().any(|(k, _)| k == key)
                && !["interface", "service", "method", "version"].contains(&key.as_str())
            {
                prop_assert_eq!(mutated.metadata.get(key.as_str()), None);
            }
        }
    }
}
