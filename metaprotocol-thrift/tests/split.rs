//! Any split of a stream decodes to the same messages as the whole stream.

mod common;

use bytes::BytesMut;
use common::{all_formats, auto_codec, decode_all, decode_one, goldens};
use metaprotocol_core::{EncodeParams, Message, Mutation};
use metaprotocol_thrift::ThriftFormat;
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
