//! Any split of a stream decodes to the same messages as the whole stream.

mod common;

use bytes::{BufMut, BytesMut};
use common::{TestResult, all_formats, auto_codec, decode_all, decode_one, goldens};
use metaprotocol_core::{Codec, DEFAULT_MAX_FRAME_BYTES, EncodeParams, Message, Mutation};
use metaprotocol_thrift::{FormatChoice, ThriftCodec, ThriftFormat};
use proptest::prelude::*;

/// For each format, a stream of every golden message translated into it, with seqids 1, 2 ...
/// One stream per format.
type Streams = Vec<(ThriftFormat, Vec<u8>)>;

fn streams() -> Result<Streams, Box<dyn std::error::Error>> {
    let messages: Vec<Message> = goldens()?
        .iter()
        .map(|g| decode_one(&g.bytes))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for format in all_formats() {
        let mut stream = BytesMut::new();
        for (i, message) in messages.iter().enumerate() {
            let params = EncodeParams {
                request_id: i as u64 + 1,
                variant: format.to_variant(),
                mutation: &Mutation::new(),
            };
            auto_codec().encode(message, &params, &mut stream)?;
        }
        out.push((format, stream.to_vec()));
    }
    Ok(out)
}

fn fingerprint(messages: &[Message]) -> Vec<(Vec<u8>, u64, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m.frame.to_vec(),
                m.request_id,
                format!("{:?}{:?}{:?}", m.kind, m.status, m.metadata),
            )
        })
        .collect()
}

/// A 4 MiB unframed call of `bulk(1: list<i32>, 2: string)` in each protocol: a million small
/// values and a long string.
fn bulk_calls() -> Vec<(&'static str, Vec<u8>)> {
    const VALUES: u32 = 1 << 20;
    let mut binary = vec![0x80, 1, 0, 1, 0, 0, 0, 4];
    binary.extend_from_slice(b"bulk");
    binary.put_i32(9);
    binary.extend_from_slice(&[15, 0, 1, 8]);
    binary.put_u32(VALUES);
    for i in 0..VALUES {
        binary.put_i32(i as i32);
    }
    binary.extend_from_slice(&[11, 0, 2]);
    binary.put_u32(60_000);
    binary.put_bytes(b's', 60_000);
    binary.put_u8(0);

    let mut compact = vec![0x82, 0x21, 9, 4];
    compact.extend_from_slice(b"bulk");
    // Field 1, list of 2^20 i32s (zigzag varints of 4 bytes), then a string.
    compact.extend_from_slice(&[0x19, 0xf5, 0x80, 0x80, 0x40]);
    for i in 0..VALUES {
        let mut v = (u64::from(i) + (1 << 20)) << 1;
        while v >= 0x80 {
            compact.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        compact.put_u8(v as u8);
    }
    compact.extend_from_slice(&[0x18, 0xe0, 0xd4, 0x03]);
    compact.put_bytes(b's', 60_000);
    compact.put_u8(0);
    vec![("binary", binary), ("compact", compact)]
}

/// A client trickling a large unframed message: every read continues the walk where the last
/// one stopped. Rescanning from the first byte on each read (as this codec once did) walks
/// about 2 GiB here instead of 4 MiB.
#[test]
fn a_trickled_unframed_message_is_walked_once() -> TestResult {
    for (protocol, call) in bulk_calls() {
        assert!(call.len() > 4 << 20, "{protocol}: {} bytes", call.len());
        let mut codec = ThriftCodec::new(FormatChoice::default(), DEFAULT_MAX_FRAME_BYTES);
        let mut src = BytesMut::new();
        let mut messages = Vec::new();
        for piece in call.chunks(1024) {
            src.extend_from_slice(piece);
            while let Some(message) = codec.decode(&mut src)? {
                messages.push(message);
            }
        }
        assert!(src.is_empty(), "{protocol}");
        assert_eq!(messages.len(), 1, "{protocol}");
        assert_eq!(&messages[0].frame[..], &call[..], "{protocol}");
        assert_eq!(messages[0].request_id, 9, "{protocol}");
        let walked = codec.unframed_bytes_walked();
        assert!(
            walked < 3 * call.len() as u64,
            "{protocol}: walked {walked} bytes of a {}-byte message",
            call.len()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_split_gives_the_same_messages(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        for (format, stream) in streams().map_err(|e| TestCaseError::fail(e.to_string()))? {
            let whole = decode_all(auto_codec().as_mut(), &stream)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(whole.len(), 56, "{}", format);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(stream.len());
            let mut codec = auto_codec();
            let mut src = BytesMut::new();
            let mut pieces = Vec::new();
            let mut from = 0;
            for cut in cuts {
                src.extend_from_slice(&stream[from..cut]);
                from = cut;
                while let Some(message) = codec.decode(&mut src).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    pieces.push(message);
                }
            }
            prop_assert!(src.is_empty());
            prop_assert_eq!(fingerprint(&pieces), fingerprint(&whole), "{}", format);
        }
    }
}
