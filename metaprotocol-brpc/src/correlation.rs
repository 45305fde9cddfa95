//! The correlation ids of an upstream connection: the engine's request ids, written so that a
//! forwarded frame keeps its length.
//!
//! A frame passing through changes only in its `correlation_id`. When the new id's varint takes
//! as many bytes as the one it replaces, the frame is copied once and the id patched in place;
//! otherwise the meta is spliced around a new field, three copies and new sizes, several times
//! the cost. The engine numbers each upstream connection's requests from 1, short varints,
//! where clients' ids are long (a brpc client's are bthread ids, 2^32 and more: five bytes and
//! up), so nearly every frame would be spliced twice, once each way.
//!
//! So an upstream codec writes the engine's id `id` as `id + 2^(7(n-1))`, a varint of exactly
//! `n` bytes, `n` being the length of the id it replaces whenever `id` fits there, and reads a
//! response's `n`-byte id `wire` back as `wire - 2^(7(n-1))` (one-byte ids stand for
//! themselves). The server echoes the value it was sent, so the response's id is as long as
//! the client's too. Within each length the mapping is one to one, so a frame decoded and
//! encoded again with the id it decoded to comes out unchanged.

use crate::wire::{MAX_VARINT_BYTES, varint_len};

/// The longest varint whose value is a positive `int64`: an upstream id is only longer when the
/// client's own id was (a negative one).
const POSITIVE_LEN: usize = 9;

/// The largest id a varint of [`POSITIVE_LEN`] bytes carries: the engine's ids stay at or below
/// it, so that each goes out as a positive `int64` whenever the client's did.
pub(crate) const MAX_ENGINE_ID: u64 = capacity(POSITIVE_LEN) - 1;

/// What a varint of `len` bytes stands for in its first byte's place: the smallest value of that
/// length (none for one byte, whose values stand for themselves).
const fn offset(len: usize) -> u64 {
    if len <= 1 { 0 } else { 1 << (7 * (len - 1)) }
}

/// How many engine ids a varint of `len` bytes (1 to 10) carries: the values of that length.
const fn capacity(len: usize) -> u64 {
    if len >= MAX_VARINT_BYTES {
        // Values from 2^63 to 2^64 - 1.
        1 << 63
    } else {
        (1 << (7 * len)) - offset(len)
    }
}

/// The `correlation_id` an upstream codec writes for the engine's `id`, replacing an id whose
/// value takes `replaced_len` bytes as a varint (0 when the frame had none): as long as that one
/// when `id` fits there, else as short as fits. Ids of 2^63 and above fit no length and are
/// written as they are (the engine's stay at or below [`MAX_ENGINE_ID`]).
pub(crate) fn to_wire(id: u64, replaced_len: usize) -> u64 {
    (replaced_len.clamp(1, MAX_VARINT_BYTES)..=MAX_VARINT_BYTES)
        .find(|&len| id < capacity(len))
        .map_or(id, |len| id + offset(len))
}

/// The engine id of a response's `correlation_id` read by an upstream codec: the inverse of
/// [`to_wire`].
pub(crate) fn from_wire(wire: u64) -> u64 {
    wire - offset(varint_len(wire))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_takes_the_length_of_the_one_it_replaces_and_comes_back() {
        for (id, replaced_len, wire_len) in [
            (1, 0, 1),
            (1, 1, 1),
            (127, 1, 1),
            (128, 1, 2),
            (1, 5, 5),
            (300, 3, 3),
            (MAX_ENGINE_ID, 1, POSITIVE_LEN),
            (MAX_ENGINE_ID, POSITIVE_LEN, POSITIVE_LEN),
            (1, MAX_VARINT_BYTES, MAX_VARINT_BYTES),
            ((1 << 63) - 1, 1, MAX_VARINT_BYTES),
        ] {
            let wire = to_wire(id, replaced_len);
            assert_eq!(varint_len(wire), wire_len, "{id} over {replaced_len} bytes");
            assert_eq!(from_wire(wire), id, "{id} over {replaced_len} bytes");
        }
        assert!(i64::try_from(to_wire(MAX_ENGINE_ID, POSITIVE_LEN)).is_ok());
    }

    #[test]
    fn every_wire_id_is_the_wire_id_of_what_it_reads_as() {
        let mut samples = vec![0, u64::MAX, 1 << 63];
        for len in 1..=MAX_VARINT_BYTES {
            let first = offset(len);
            let last = first.wrapping_add(capacity(len)).wrapping_sub(1);
            samples.extend([first, first + 1, last - 1, last]);
        }
        for wire in samples {
            let len = varint_len(wire);
            assert_eq!(to_wire(from_wire(wire), len), wire, "{wire}");
        }
    }
}
