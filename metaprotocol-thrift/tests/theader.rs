//! THeader details: the `seq` field's two conventions, persistent (`PKEYVALUE`) headers, and a
//! block of more headers than metadata holds.

mod common;

use bytes::{BufMut, BytesMut};
use common::{TestResult, decode_one, encode_checked, goldens};
use metaprotocol_core::{
    EncodeParams, MAX_METADATA_ENTRIES, Message, MessageKind, Mutation, WireVariant,
};
use metaprotocol_thrift::{Protocol, ThriftFormat, Transport};

fn encode(
    message: &Message,
    request_id: u64,
    mutation: &Mutation,
) -> Result<BytesMut, Box<dyn std::error::Error>> {
    let params = EncodeParams {
        request_id,
        variant: WireVariant::DEFAULT,
        mutation,
    };
    Ok(encode_checked(message, &params)?)
}

fn header(message: &Message, key: &str) -> Option<String> {
    message.metadata.get(key).map(str::to_owned)
}

#[test]
fn seq_follows_the_seqid_only_when_it_mirrored_it() -> TestResult {
    let golden = goldens()?
        .into_iter()
        .find(|g| g.name == "binary-header-hello.req.hex")
        .ok_or("missing")?;
    let python_style = decode_one(&encode(&decode_one(&golden.bytes)?, 5, &Mutation::new())?)?;
    assert_eq!(&python_style.frame[8..12], &5u32.to_be_bytes());
    let rewritten = encode(&python_style, 9, &Mutation::new())?;
    assert_eq!(
        &rewritten[8..12],
        &9u32.to_be_bytes(),
        "seq mirrored the seqid: follows it"
    );

    // Node's client leaves seq at 0 while its seqids count up: the rewrite leaves it alone.
    let mut node_style = python_style.frame.to_vec();
    node_style[8..12].copy_from_slice(&[0, 0, 0, 0]);
    let node_style = decode_one(&node_style)?;
    assert_eq!(node_style.request_id, 5);
    for mutation in [Mutation::new(), {
        let mut m = Mutation::new();
        m.set("x".into(), "1".into());
        m
    }] {
        let rewritten = encode(&node_style, 9, &mutation)?;
        assert_eq!(&rewritten[8..12], &[0, 0, 0, 0]);
        assert_eq!(decode_one(&rewritten)?.request_id, 9);
    }
    Ok(())
}

/// Apache Thrift's THeader readers (C++, Python, Go, Ruby, Node.js) read the `KEYVALUE` groups
/// of a header block up to the first group of another id, persistent `PKEYVALUE` (2) included,
/// and hand the handler none of the headers from there on. What routes and policies see is what
/// such a server sees: those headers are not read, nor is a malformed one refused; they go to
/// the server as they came, after the headers a mutation edits, which never take them in.
#[test]
fn headers_from_a_persistent_group_on_are_forwarded_unread() -> TestResult {
    // KEYVALUE {k: v}, then what Apache's readers skip: PKEYVALUE {p: 1}, KEYVALUE {late: 1}.
    let read = [1u8, 1, 1, b'k', 1, b'v'];
    let unread = [
        2u8, 1, 1, b'p', 1, b'1', 1, 1, 4, b'l', b'a', b't', b'e', 1, b'1',
    ];
    let mut block = [&[0u8, 0][..], &read, &unread].concat();
    block.resize(block.len().next_multiple_of(4), 0);
    let call = [0x80u8, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 3, 0];
    let message = decode_one(&theader_frame(3, &block, &call))?;
    let headers = |message: &Message| {
        let mut keys: Vec<String> = message.metadata.iter().map(|(k, _)| k.to_owned()).collect();
        keys.sort();
        keys
    };
    assert_eq!(
        headers(&message),
        ["k", "method"],
        "headers Apache Thrift's servers never read were taken as the call's"
    );
    assert_eq!(header(&message, "k").as_deref(), Some("v"));

    // A mutation edits the headers read; the rest follows as it came, and is read by no one.
    let mut mutation = Mutation::new();
    mutation.remove("k".into());
    mutation.set("x".into(), "y".into());
    let out = encode(&message, 3, &mutation)?;
    let mutated = decode_one(&out)?;
    assert_eq!(
        headers(&mutated),
        ["method", "x"],
        "the headers the server reads after the mutation"
    );
    assert!(
        out.windows(unread.len()).any(|w| w == unread),
        "the headers not read were not forwarded as they came: {out:?}"
    );
    assert_eq!(
        encode(&message, 3, &Mutation::new())?,
        theader_frame(3, &block, &call)
    );

    // A persistent group Apache's readers never parse cannot make the call malformed (a key
    // that runs past the block, here).
    let mut block = [&[0u8, 0][..], &read, &[2, 1, 0x7f]].concat();
    block.resize(block.len().next_multiple_of(4), 0);
    let message = decode_one(&theader_frame(3, &block, &call))?;
    assert_eq!(headers(&message), ["k", "method"]);
    Ok(())
}

/// A THeader call whose headers are spelt as the codec's own keys: a call that is not
/// multiplexed has no `service`, and a client's header `service` must not stand in for one
/// (routes, rbac and access logs would take the client's word for the call's service), nor a
/// header `method` for its method. Such headers are no reason to refuse the call (Apache
/// Thrift's servers hand every info header to the handler, whatever its name): they are
/// forwarded in the frame as they came, and stay out of the metadata.
#[test]
fn headers_spelt_as_the_codecs_own_keys_do_not_become_them() -> TestResult {
    // KEYVALUE {service: Admin, method: deleteAll, tenant: t1}, padding.
    let mut headers = Vec::new();
    for (key, value) in [
        ("service", "Admin"),
        ("method", "deleteAll"),
        ("tenant", "t1"),
    ] {
        for text in [key, value] {
            put_varint(&mut headers, text.len());
            headers.extend_from_slice(text.as_bytes());
        }
    }
    let mut block = [&[0u8, 0, 1, 3][..], &headers].concat();
    block.resize(block.len().next_multiple_of(4), 0);
    for (name, service) in [(&b"get"[..], None), (&b"Svc:get"[..], Some("Svc"))] {
        let mut call = vec![0x80u8, 1, 0, 1];
        call.extend_from_slice(&(name.len() as u32).to_be_bytes());
        call.extend_from_slice(name);
        call.extend_from_slice(&[0, 0, 0, 4, 0]);
        let message = decode_one(&theader_frame(4, &block, &call))?;
        assert_eq!(
            (header(&message, "service"), header(&message, "method")),
            (service.map(str::to_owned), Some("get".to_owned())),
            "a client's headers were taken for the call's service and method"
        );
        assert_eq!(header(&message, "tenant").as_deref(), Some("t1"));
        assert_eq!(message.reject_reason, None);
        // Forwarded as they came, also beside a mutation's header.
        let mut mutation = Mutation::new();
        mutation.set("x".into(), "y".into());
        for mutation in [Mutation::new(), mutation] {
            let out = encode(&message, 4, &mutation)?;
            assert!(
                out.windows(headers.len()).any(|w| w == headers),
                "headers not forwarded: {out:?}"
            );
        }
    }
    Ok(())
}

/// Apache Thrift's readers (C++, Python, Go) keep a header's last value when a block gives its
/// key twice, whatever its bytes. A last value that is not UTF-8 cannot be metadata, so the key
/// is not there: its earlier value, which no server reads, must not stay for routes and
/// policies to judge. A later UTF-8 value replaces a value that is not, as any value does.
#[test]
fn a_header_whose_last_value_is_not_utf8_keeps_none_of_its_earlier_values() -> TestResult {
    let call = [0x80u8, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 3, 0];
    for (values, expected) in [
        (&[&b"admin"[..], b"\xff"][..], None),
        (&[b"admin", b"\xff", b"\xfe"], None),
        (&[b"\xff", b"t1"], Some("t1")),
        (&[b"t1", b"t2"], Some("t2")),
    ] {
        let mut block = vec![0u8, 0, 1];
        put_varint(&mut block, values.len() + 1);
        for (key, value) in values
            .iter()
            .map(|value| (&b"tenant"[..], *value))
            .chain([(&b"k"[..], &b"v"[..])])
        {
            for text in [key, value] {
                put_varint(&mut block, text.len());
                block.extend_from_slice(text);
            }
        }
        block.resize(block.len().next_multiple_of(4), 0);
        let message = decode_one(&theader_frame(3, &block, &call))?;
        assert_eq!(message.reject_reason, None);
        assert_eq!(
            header(&message, "tenant").as_deref(),
            expected,
            "values {values:?}: the metadata kept a value the server does not read"
        );
        assert_eq!(header(&message, "k").as_deref(), Some("v"), "{values:?}");
    }
    Ok(())
}

/// Decision: a `KEYVALUE` group that says more headers than its header block holds is refused
/// (the frame closes its connection as malformed), since Apache Thrift's readers disagree on
/// it and no metadata could say what every server reads. C++ stops at the block's end and
/// keeps the headers read; Go reads the block alone and fails on the missing header (an error,
/// the frame unread); Python 0.22 reads on past the block into the message, taking the
/// message's bytes for headers (measured: a call `mmm...` gave its handler a header keyed
/// `\x00\x01\x00\x00\x00\xc8mmm...`), and fails where the frame ends first. No Apache client
/// writes such a group.
#[test]
fn a_header_group_running_past_its_block_is_refused() -> TestResult {
    let call = [0x80u8, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 3, 0];
    // KEYVALUE of two headers, {k: v} the only one in the block, then padding.
    let block = [0u8, 0, 1, 2, 1, b'k', 1, b'v'];
    let error = decode_one(&theader_frame(3, &block, &call))
        .err()
        .ok_or("a group running past its block was read")?;
    assert_eq!(
        error.to_string(),
        "malformed frame: a THeader header runs past its header block"
    );
    // The same group saying one header is read.
    let block = [0u8, 0, 1, 1, 1, b'k', 1, b'v'];
    let message = decode_one(&theader_frame(3, &block, &call))?;
    assert_eq!(header(&message, "k").as_deref(), Some("v"));
    Ok(())
}

/// A header block that ends inside one of its own fields (a varint whose last byte is missing)
/// is refused as such, not as a frame that "ends inside the message": the message was never
/// reached.
#[test]
fn a_header_block_ending_inside_a_field_says_so() -> TestResult {
    let call = [0x80u8, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 3, 0];
    for (block, field) in [
        (&[0x80u8, 0x80, 0x80, 0x80][..], "the protocol id"),
        (&[0u8, 1, 0x80, 0x80][..], "a transform id"),
        (&[0u8, 0, 1, 0x80][..], "a KEYVALUE group's count"),
    ] {
        let error = decode_one(&theader_frame(3, block, &call))
            .err()
            .ok_or(format!("a block ending inside {field} was read"))?;
        assert_eq!(
            error.to_string(),
            "malformed frame: a THeader header block ends inside a field",
            "{field}"
        );
    }
    Ok(())
}

/// A binary THeader frame of a multiplexed `Svc:ping` of `message_type` whose `KEYVALUE` group
/// holds `headers` distinct headers.
fn with_headers(message_type: u8, headers: usize) -> BytesMut {
    let mut block = vec![0u8, 0, 1];
    put_varint(&mut block, headers);
    for n in 0..headers {
        let key = format!("h{n:04}");
        put_varint(&mut block, key.len());
        block.extend_from_slice(key.as_bytes());
        block.extend_from_slice(&[1, b'v']);
    }
    block.resize(block.len().next_multiple_of(4), 0);
    let name = b"Svc:ping";
    let mut call = vec![0x80u8, 1, 0, message_type];
    call.extend_from_slice(&(name.len() as u32).to_be_bytes());
    call.extend_from_slice(name);
    call.extend_from_slice(&[0, 0, 0, 1, 0]);
    theader_frame(1, &block, &call)
}

/// A framed THeader frame: flags 0, `seq`, the header `block` (padded to whole words), then
/// the `call`.
fn theader_frame(seq: u32, block: &[u8], call: &[u8]) -> BytesMut {
    let mut frame = BytesMut::new();
    frame.put_u32((10 + block.len() + call.len()) as u32);
    frame.extend_from_slice(&[0x0f, 0xff, 0, 0]);
    frame.put_u32(seq);
    frame.put_u16((block.len() / 4) as u16);
    frame.extend_from_slice(block);
    frame.extend_from_slice(call);
    frame
}

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[test]
fn more_headers_than_metadata_holds_overflow_it_and_keep_the_message() -> TestResult {
    let fits = decode_one(&with_headers(1, 8))?;
    assert!(!fits.metadata.overflowed());
    assert_eq!(header(&fits, "service").as_deref(), Some("Svc"));
    assert_eq!(header(&fits, "method").as_deref(), Some("ping"));
    // A call the engine answers itself (the metadata overflowed), and a reply it forwards: a
    // server's reply must not cost the connection its other calls.
    for (message_type, kind) in [(1, MessageKind::Request), (2, MessageKind::Response)] {
        for headers in [MAX_METADATA_ENTRIES - 1, MAX_METADATA_ENTRIES, 300] {
            let message = decode_one(&with_headers(message_type, headers))?;
            assert_eq!(message.kind, kind);
            assert!(message.metadata.overflowed(), "{headers} headers");
            assert_eq!(message.metadata.len(), MAX_METADATA_ENTRIES);
        }
    }
    Ok(())
}

/// A binary THeader frame of a `ping` of `message_type` whose header block is `words` words:
/// one `KEYVALUE` header, `big`, whose value fills it (`words` at least 4,096).
fn with_block_words(message_type: u8, words: usize) -> BytesMut {
    // Protocol, transforms, group, count, the key; a value length of three varint bytes.
    let mut block = vec![0u8, 0, 1, 1, 3, b'b', b'i', b'g'];
    let value_len = words * 4 - block.len() - 3;
    put_varint(&mut block, value_len);
    block.resize(words * 4, b'v');
    let call = [
        &[0x80u8, 1, 0, message_type, 0, 0, 0, 4][..],
        b"ping",
        &[0, 0, 0, 1, 0],
    ]
    .concat();
    theader_frame(1, &block, &call)
}

/// Apache Thrift's C++ and Ruby THeader readers refuse a header block of 16,384 words (64 KiB)
/// or more, closing the connection. A call with one is refused (answered `PROTOCOL_ERROR`,
/// its connection kept) rather than forwarded on a server connection other clients share; a
/// reply with one is the client's to read, and is forwarded (in another protocol too). A
/// mutation that would grow a block past the limit fails the encode rather than write it.
#[test]
fn header_blocks_apache_thrift_readers_refuse_are_neither_forwarded_nor_written() -> TestResult {
    let largest = decode_one(&with_block_words(1, 16383))?;
    assert_eq!(largest.reject_reason, None);
    let over = decode_one(&with_block_words(1, 16384))?;
    assert_eq!(over.kind, MessageKind::Request);
    assert_eq!(over.metadata.get("method"), Some("ping"));
    let reason = over
        .reject_reason
        .ok_or("a call with a 64 KiB header block was forwarded")?;
    assert!(reason.contains("header block"), "{reason}");
    let reply = decode_one(&with_block_words(2, 16384))?;
    assert_eq!(
        (reply.kind, reply.reject_reason),
        (MessageKind::Response, None)
    );
    // Copied into another protocol, its block is written as it came.
    let params = EncodeParams {
        request_id: 300,
        variant: ThriftFormat::new(Transport::Header, Protocol::Compact).to_variant(),
        mutation: &Mutation::new(),
    };
    let translated = decode_one(&encode_checked(&reply, &params)?)?;
    assert_eq!(translated.request_id, 300);
    assert_eq!(
        translated.metadata.get("big").map(str::len),
        reply.metadata.get("big").map(str::len)
    );

    let mut mutation = Mutation::new();
    mutation.set("x".into(), "y".into());
    assert!(encode(&largest, 3, &Mutation::new()).is_ok());
    let error = encode(&largest, 3, &mutation)
        .err()
        .ok_or("a 64 KiB header block was written")?;
    assert!(error.to_string().contains("header block"), "{error}");
    Ok(())
}

/// Apache Thrift's THeader readers (C++, Python, Java) refuse a frame whose length is over
/// `0x3FFFFFFF` as corrupt (a length that large is more likely a stray HTTP request or another
/// protocol than a THeader frame), and close the connection. So does the codec, whatever its
/// cap, on either side, once the length and the magic are in, rather than wait for a gigabyte
/// to arrive (a cap at `i32::MAX`) or pass it over and answer it; a frame of `0x3FFFFFFF`
/// bytes is still awaited.
#[test]
fn theader_frames_over_apache_thrifts_limit_are_refused() -> TestResult {
    use metaprotocol_core::{Codec, Side};
    use metaprotocol_thrift::{FormatChoice, ThriftCodec};
    const LIMIT: u32 = 0x3FFF_FFFF;
    for side in [Side::Downstream, Side::Upstream] {
        for cap in [i32::MAX as usize, 1024] {
            for (len, refused) in [(LIMIT + 1, true), (u32::MAX, true), (LIMIT, false)] {
                let what = format!("{side:?}, cap {cap}, length {len:#x}");
                let message_type = if side == Side::Downstream { 1 } else { 2 };
                let mut frame = with_headers(message_type, 1);
                frame[..4].copy_from_slice(&len.to_be_bytes());
                let mut codec = ThriftCodec::for_side(side, FormatChoice::default(), cap);
                let decoded = codec.decode(&mut frame.clone());
                if !refused {
                    match cap {
                        1024 => assert!(
                            matches!(
                                decoded,
                                Err(metaprotocol_core::CodecError::FrameTooLarge { .. })
                            ),
                            "{what}: {decoded:?}"
                        ),
                        _ => assert!(matches!(decoded, Ok(None)), "{what}: {decoded:?}"),
                    }
                    continue;
                }
                assert!(
                    matches!(decoded, Err(metaprotocol_core::CodecError::Malformed(_))),
                    "{what}: {decoded:?}"
                );
                assert_eq!(codec.oversized_response(&frame), None, "{what}");
            }
        }
    }
    Ok(())
}

/// A call that grows past `0x3FFFFFFF` bytes on its way to a THeader server (a mutation adding
/// a header to a frame at the limit, a framed call rewritten THeader) fails alone, with an
/// encode error the engine answers, whatever the cap allows: Apache Thrift's THeader readers
/// would close the connection that other clients' calls share. The frames are allocated
/// zeroed and never written past their heads, so they hold little memory; the refusal comes
/// before the message is copied.
#[test]
fn calls_growing_past_apache_thrifts_theader_limit_are_not_written() -> TestResult {
    use metaprotocol_core::{Codec, CodecError, Side};
    use metaprotocol_thrift::{FormatChoice, ThriftCodec};
    const LIMIT: usize = 0x3FFF_FFFF;
    // A strict binary call of `ping`, seqid 7, whose argument is one string field filling
    // the frame up to `len` bytes after its length prefix, behind `head` (a THeader
    // prelude, or nothing).
    let call = |head: &[u8], len: usize| -> BytesMut {
        let mut start = (len as u32).to_be_bytes().to_vec();
        start.extend_from_slice(head);
        start.extend_from_slice(&[
            0x80, 1, 0, 1, 0, 0, 0, 4, b'p', b'i', b'n', b'g', 0, 0, 0, 7,
        ]);
        // The string field 1, its bytes (and the struct's stop byte) zeroes, as allocated.
        let value = 4 + len - (start.len() + 3 + 4) - 1;
        start.extend_from_slice(&[11, 0, 1]);
        start.extend_from_slice(&(value as u32).to_be_bytes());
        let mut frame = BytesMut::zeroed(4 + len);
        frame[..start.len()].copy_from_slice(&start);
        frame
    };
    let theader_head = [0x0f, 0xff, 0, 0, 0, 0, 0, 7, 0, 1, 0, 0, 0, 0];
    let mut mutation = Mutation::new();
    mutation.set("k".into(), "v".into());
    let to_theader = WireVariant::from(ThriftFormat::new(Transport::Header, Protocol::Binary));
    for (what, mut frame, variant, mutation) in [
        (
            "a header added to a THeader call at the limit",
            call(&theader_head, LIMIT),
            WireVariant::DEFAULT,
            &mutation,
        ),
        (
            "a framed call at the limit rewritten THeader",
            call(&[], LIMIT),
            to_theader,
            &Mutation::new(),
        ),
    ] {
        let mut codec =
            ThriftCodec::for_side(Side::Downstream, FormatChoice::default(), i32::MAX as usize);
        let message = codec
            .decode(&mut frame)?
            .ok_or("the call is not read whole")?;
        assert_eq!(message.reject_reason, None, "{what}");
        let params = EncodeParams {
            request_id: 9,
            variant,
            mutation,
        };
        let mut out = BytesMut::new();
        let encoded = codec.encode(&message, &params, &mut out);
        assert!(
            matches!(encoded, Err(CodecError::Encode(_))),
            "{what}: {:?}, {} bytes written",
            encoded,
            out.len()
        );
        assert!(out.is_empty(), "{what}");
    }
    Ok(())
}

/// A lax binary THeader call (no version word, as a `TBinaryProtocol` with `strictWrite` off
/// writes it) is forwarded strict, 3 bytes longer: the size check made before the message is
/// copied counts them, so a call that would end past the frame limit is refused with nothing
/// copied (it was copied whole, up to a gigabyte for the THeader limit, and refused after),
/// and one that ends at the limit exactly is written.
#[test]
fn a_lax_theader_call_grown_past_the_limit_is_refused_before_it_is_copied() -> TestResult {
    use metaprotocol_core::{Codec, CodecError, Side};
    use metaprotocol_thrift::{FormatChoice, ThriftCodec};
    const CAP: usize = 64 * 1024;
    // A lax binary call of `ping`, seqid 7, in a THeader frame of `len` bytes after its length
    // prefix: its argument, one string field, fills the frame.
    let lax_call = |len: usize| -> BytesMut {
        let mut frame = BytesMut::new();
        frame.put_u32(len as u32);
        frame.extend_from_slice(&[0x0f, 0xff, 0, 0, 0, 0, 0, 7, 0, 1, 0, 0, 0, 0]);
        frame.put_u32(4);
        frame.extend_from_slice(b"ping");
        frame.extend_from_slice(&[1, 0, 0, 0, 7, 11, 0, 1]);
        let value = 4 + len - frame.len() - 4 - 1;
        frame.put_u32(value as u32);
        frame.put_bytes(b'v', value);
        frame.put_u8(0);
        frame
    };
    for (len, fits) in [(CAP - 3, true), (CAP - 2, false), (CAP, false)] {
        let mut codec = ThriftCodec::for_side(Side::Downstream, FormatChoice::default(), CAP);
        let message = codec
            .decode(&mut lax_call(len))?
            .ok_or("the call is not read whole")?;
        assert_eq!(message.reject_reason, None, "{len}");
        let params = EncodeParams {
            request_id: 9,
            variant: WireVariant::DEFAULT,
            mutation: &Mutation::new(),
        };
        let mut out = BytesMut::new();
        let encoded = codec.encode(&message, &params, &mut out);
        if fits {
            encoded?;
            assert_eq!(out.len(), 4 + CAP, "{len}");
            assert_eq!(&out[18..22], &[0x80, 1, 0, 1], "{len}: written strict");
            continue;
        }
        assert!(
            matches!(encoded, Err(CodecError::Encode(_))),
            "{len}: {encoded:?}"
        );
        assert!(out.is_empty(), "{len}");
        assert!(
            out.capacity() < 1024,
            "{len}: refused after {} bytes were made room for",
            out.capacity()
        );
    }
    Ok(())
}
