//! The structured input of the round-trip targets: a byte stream and what the proxy does to the
//! messages in it.
//!
//! The stream comes first, behind a two-byte big-endian length, so that a seed is simply a
//! captured stream with its length in front (`seed-corpus.sh` writes them); the [`Edit`] is
//! read by `arbitrary` from whatever follows, and is all defaults when nothing does.

use arbitrary::{Arbitrary, Result, Unstructured};
use metaprotocol_core::{ByteStr, Mutation};

/// Header names the codecs give a meaning to or the golden captures carry, so that mutations
/// often meet existing entries and reserved names.
const KNOWN_KEYS: [&str; 16] = [
    "tenant",
    "x-trace-id",
    "interface",
    "service",
    "method",
    "version",
    "group",
    "path",
    "timeout",
    "dubbo",
    "log_id",
    "request_id",
    "timeout_ms",
    "error_code",
    "server",
    "",
];

/// A header name: a well-known one, or anything.
#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Other(String),
}

impl Key {
    fn to_byte_str(&self) -> ByteStr {
        match self {
            Self::Known(index) => {
                let key = KNOWN_KEYS
                    .get(usize::from(*index) % KNOWN_KEYS.len())
                    .copied()
                    .unwrap_or_default();
                ByteStr::from_static(key)
            }
            Self::Other(key) => ByteStr::copy_from_str(key),
        }
    }
}

/// One header operation of a mutation.
#[derive(Debug, Arbitrary)]
enum Op {
    Set(Key, String),
    Remove(Key),
}

/// What the proxy does to a message it forwards.
#[derive(Debug, Arbitrary)]
pub struct Edit {
    /// The id to write, mapped into the protocol's range (see [`Edit::request_id`]).
    raw_id: u64,
    /// Picks the encoding to write in, for codecs that have several.
    pub variant: u16,
    ops: Vec<Op>,
}

impl Edit {
    /// An edit writing `raw_id` (mapped as by [`Edit::request_id`]) in the encoding `variant`
    /// picks, setting `sets` and removing `removals`: for replaying fixed cases.
    pub fn new(raw_id: u64, variant: u16, sets: &[(&str, &str)], removals: &[&str]) -> Self {
        let sets = sets
            .iter()
            .map(|(k, v)| Op::Set(Key::Other((*k).to_owned()), (*v).to_owned()));
        let removals = removals
            .iter()
            .map(|k| Op::Remove(Key::Other((*k).to_owned())));
        Self {
            raw_id,
            variant,
            ops: removals.chain(sets).collect(),
        }
    }

    /// The id to write: one the engine could allocate, in `1..=max`.
    pub fn request_id(&self, max: u64) -> u64 {
        self.raw_id % max.max(1) + 1
    }

    /// The header mutation.
    pub fn mutation(&self) -> Mutation {
        let mut mutation = Mutation::new();
        for op in &self.ops {
            match op {
                Op::Set(key, value) => {
                    mutation.set(key.to_byte_str(), ByteStr::copy_from_str(value))
                }
                Op::Remove(key) => mutation.remove(key.to_byte_str()),
            }
        }
        mutation
    }
}

/// A stream of frames and an edit for each message in it.
#[derive(Debug)]
pub struct RoundTrip<'a> {
    /// The bytes one peer sent on a connection.
    pub stream: &'a [u8],
    /// What the proxy does to the messages.
    pub edit: Edit,
}

impl<'a> RoundTrip<'a> {
    /// Builds a round trip from raw fuzzer (or seed) bytes: the length prefix, the stream, and
    /// the edit from the rest.
    pub fn from_bytes(data: &'a [u8]) -> Result<Self> {
        Self::arbitrary_take_rest(Unstructured::new(data))
    }

    fn stream(u: &mut Unstructured<'a>) -> Result<&'a [u8]> {
        let len = usize::from(u16::from_be_bytes(<[u8; 2]>::arbitrary(u)?));
        u.bytes(len.min(u.len()))
    }
}

impl<'a> Arbitrary<'a> for RoundTrip<'a> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            stream: Self::stream(u)?,
            edit: Edit::arbitrary(u)?,
        })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> Result<Self> {
        Ok(Self {
            stream: Self::stream(&mut u)?,
            edit: Edit::arbitrary_take_rest(u)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_is_a_length_and_a_stream() -> Result<()> {
        let input = RoundTrip::from_bytes(&[0, 3, b'a', b'b', b'c'])?;
        assert_eq!(input.stream, b"abc");
        assert!(input.edit.mutation().is_empty());
        assert_eq!(input.edit.request_id(100), 1);
        Ok(())
    }
}
