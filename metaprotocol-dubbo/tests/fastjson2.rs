//! Calls in fastjson2 (serialization id 23), which Dubbo 3.2 and later consumers prefer when
//! their provider offers it: every call field, argument and the attachments map is a 4-byte
//! big-endian length and a value in fastjson2's binary JSON (JSONB). Their call fields and
//! attachments are metadata, as a Hessian2 call's are.
//!
//! The frames are built byte by byte from fastjson2's JSONB format (see
//! `tests/testdata/fastjson2/README.md`): no fastjson2 writer runs here.

use bytes::BytesMut;
use metaprotocol_core::{
    ByteStr, Codec, CodecError, DEFAULT_MAX_FRAME_BYTES, EncodeParams, Message, MessageKind,
    Mutation, WireVariant,
};
use metaprotocol_dubbo::DubboCodec;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A JSONB int32: one byte from -16 to 47, two to 2,047, three to 262,143, else `0x48` and four.
fn int32(value: i32) -> Vec<u8> {
    let [b0, b1, b2, b3] = value.to_be_bytes();
    match value {
        -16..=47 => vec![b3],
        -2048..=2047 => vec![0x38_u8.wrapping_add(b2), b3],
        -262_144..=262_143 => vec![0x44_u8.wrapping_add(b1), b2, b3],
        _ => vec![0x48, b0, b1, b2, b3],
    }
}

/// A JSONB string as fastjson2 writes a Latin-1 one: ASCII of up to 47 bytes in the tag, longer
/// after `0x79` and its length.
fn latin1(text: &str) -> Vec<u8> {
    let bytes: Vec<u8> = text.chars().map(|c| c as u8).collect();
    let mut out = match u8::try_from(bytes.len()) {
        Ok(len) if len <= 47 => vec![0x49 + len],
        _ => [vec![0x79], int32(bytes.len() as i32)].concat(),
    };
    out.extend_from_slice(&bytes);
    out
}

/// A JSONB string in UTF-16 little-endian (`0x7c`), as fastjson2 writes mostly non-Latin text.
fn utf16le(text: &str) -> Vec<u8> {
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    [vec![0x7c], int32(units.len() as i32), units].concat()
}

/// A JSONB string in UTF-8 (`0x7a`).
fn utf8(text: &str) -> Vec<u8> {
    [
        vec![0x7a],
        int32(text.len() as i32),
        text.as_bytes().to_vec(),
    ]
    .concat()
}

/// One value of a fastjson2 body: its length in four bytes, then its JSONB.
fn field(jsonb: &[u8]) -> Vec<u8> {
    [(jsonb.len() as u32).to_be_bytes().to_vec(), jsonb.to_vec()].concat()
}

/// A JSONB object (a `HashMap`, written without its class name) of these entries.
fn object(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0xa6];
    for (key, value) in entries {
        out.extend_from_slice(key);
        out.extend_from_slice(value);
    }
    out.push(0xa5);
    out
}

/// A two-way fastjson2 request (flag `0xd7`) with request id `id` and `body`.
fn frame(id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xda, 0xbb, 0xc0 | 23, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The call fields of `demo.Greeter` version 1.0.0 `sayHello(String)` and its argument.
fn call_head() -> Vec<u8> {
    let mut body = Vec::new();
    for text in [
        "2.0.2",
        "demo.Greeter",
        "1.0.0",
        "sayHello",
        "Ljava/lang/String;",
    ] {
        body.extend(field(&latin1(text)));
    }
    body.extend(field(&latin1("world")));
    body
}

/// A call with the `path` attachment and `entries` (raw JSONB key and value) after it.
fn call_with(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut all = vec![(latin1("path"), latin1("demo.Greeter"))];
    all.extend_from_slice(entries);
    let mut body = call_head();
    body.extend(field(&object(&all)));
    frame(1, &body)
}

fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
    let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES);
    let mut stream = BytesMut::from(bytes);
    let message = codec
        .decode(&mut stream)?
        .ok_or(CodecError::malformed("incomplete"))?;
    assert!(stream.is_empty());
    Ok(message)
}

/// A call as a Dubbo 3.2 consumer writes it in fastjson2 (from the testdata): decoded into the
/// same metadata as a Hessian2 call, not refused.
#[test]
fn a_fastjson2_call_is_routed_on_its_fields_and_attachments() -> TestResult {
    let hex = include_str!("testdata/fastjson2/dubbo32-sayhello.req.hex");
    let call = decode(&hex::decode(hex.trim())?)?;
    assert_eq!(call.kind, MessageKind::Request);
    assert_eq!(call.request_id, 1);
    assert_eq!(call.reject_reason, None);
    let text = |key| call.metadata.get(key);
    assert_eq!(text("interface"), Some("demo.Greeter"));
    assert_eq!(text("service"), Some("demo.Greeter"));
    assert_eq!(text("method"), Some("sayHello"));
    assert_eq!(text("version"), Some("1.0.0"));
    assert_eq!(text("group"), Some("g1"));
    assert_eq!(text("tenant"), Some("t1"));
    assert_eq!(text("timeout"), Some("3000"));
    assert_eq!(text("remote.application"), Some("consumer"));
    Ok(())
}

/// Attachments of other JSONB types: strings in every encoding fastjson2 writes, numbers and
/// booleans as the text Java prints; a null is none; lists, maps and objects are not there.
#[test]
fn fastjson2_attachment_values_read_as_java_prints_them() -> TestResult {
    let long_text = "x".repeat(300);
    let call = decode(&call_with(&[
        (latin1("int"), int32(3000)),
        (latin1("small"), int32(-7)),
        (latin1("big"), int32(i32::MIN)),
        (latin1("long"), vec![0xbe, 0, 0, 0, 1, 0, 0, 0, 0]),
        (latin1("long1"), vec![0xe5]),
        (latin1("long2"), vec![0xc8, 0x01]),
        (latin1("byte"), vec![0xbd, 0xff]),
        (latin1("short"), vec![0xbc, 0x01, 0x00]),
        (latin1("yes"), vec![0xb1]),
        (latin1("no"), vec![0xb0]),
        (
            latin1("half"),
            [vec![0xb5], 0.5_f64.to_be_bytes().to_vec()].concat(),
        ),
        (latin1("one"), vec![0xb3]),
        (latin1("char"), [vec![0x90], int32(0x4e2d)].concat()),
        (latin1("zh"), utf16le("中文")),
        (
            latin1("be"),
            [vec![0x7d], int32(4), vec![0x4e, 0x2d, 0x65, 0x87]].concat(),
        ),
        (latin1("utf8"), utf8("é")),
        (latin1("latin"), latin1("café")),
        (latin1("long_text"), latin1(&long_text)),
        (utf16le("clé"), latin1("v")),
        (latin1("gone"), latin1("first")),
        (latin1("gone"), vec![0xaf]),
        (latin1("list"), vec![0x96, 0x01, 0x02]),
        (latin1("map"), object(&[(latin1("k"), latin1("v"))])),
        (int32(5), latin1("int key")),
        (latin1("after"), latin1("all")),
    ]))?;
    assert_eq!(call.reject_reason, None);
    let text = |key| call.metadata.get(key);
    for (key, value) in [
        ("int", "3000"),
        ("small", "-7"),
        ("big", "-2147483648"),
        ("long", "4294967296"),
        ("long1", "5"),
        ("long2", "-2047"),
        ("byte", "-1"),
        ("short", "256"),
        ("yes", "true"),
        ("no", "false"),
        ("half", "0.5"),
        ("one", "1.0"),
        ("char", "中"),
        ("zh", "中文"),
        ("be", "中文"),
        ("utf8", "é"),
        ("latin", "café"),
        ("long_text", long_text.as_str()),
        ("clé", "v"),
        ("after", "all"),
    ] {
        assert_eq!(text(key), Some(value), "{key}");
    }
    for key in ["gone", "list", "map", "5"] {
        assert_eq!(text(key), None, "{key}");
    }
    Ok(())
}

/// The checks of Hessian2 calls hold for fastjson2 ones: a `path` attachment naming another
/// service, a callback argument, a stub event, a `version` or `group` that is no string.
#[test]
fn fastjson2_calls_are_refused_as_hessian2_ones_are() -> TestResult {
    let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
        (
            latin1("path"),
            latin1("demo.Admin"),
            "the path attachment names another service than the call",
        ),
        (
            latin1("sys_callback_arg-1"),
            latin1("1"),
            "callback arguments",
        ),
        (
            latin1("dubbo.stub.event"),
            latin1("true"),
            "stub event calls",
        ),
        (
            latin1("version"),
            int32(1),
            "the version attachment is not a UTF-8 string",
        ),
        (
            latin1("group"),
            int32(1),
            "the group attachment is not a UTF-8 string",
        ),
        (
            latin1("version"),
            [vec![0x7c], int32(2), vec![0x00, 0xd8]].concat(),
            "the version attachment is not a UTF-8 string",
        ),
    ];
    for (key, value, reason) in cases {
        let call = decode(&call_with(&[(key, value)]))?;
        let refused = call.reject_reason.unwrap_or_default();
        assert!(refused.starts_with(reason), "{refused:?} for {reason:?}");
        assert!(call.metadata.is_empty());
    }
    // The path attachment in another encoding than the field, with the same text, is the same.
    let call = decode(&call_with(&[(latin1("path"), utf8("demo.Greeter"))]))?;
    assert_eq!(call.reject_reason, None);
    // Version 0.0.0 is the empty version, an interface attachment does not override the field.
    let call = decode(&call_with(&[
        (latin1("version"), latin1("0.0.0")),
        (latin1("interface"), latin1("demo.Other")),
    ]))?;
    assert_eq!(call.metadata.get("version"), Some(""));
    assert_eq!(call.metadata.get("interface"), Some("demo.Greeter"));
    // So is version `*`, which Dubbo 3's service keys treat as none too.
    let call = decode(&call_with(&[(latin1("version"), latin1("*"))]))?;
    assert_eq!(call.metadata.get("version"), Some(""), "version *");
    Ok(())
}

/// A call field the provider reads and the codec cannot decode (GB18030 past ASCII, UTF-8 that
/// is not) refuses the call: a path or method left out of the metadata would pass policies
/// keyed on it, and a parameter descriptor read as none (no arguments) had the first argument,
/// a map, read as the attachments, while the provider, which counts the arguments, reads the
/// real ones.
#[test]
fn a_fastjson2_call_field_that_cannot_be_decoded_is_refused() -> TestResult {
    let broken = gb18030(&[0x81, 0x30, 0x81, 0x30]);
    let fields = |path: &[u8], method: &[u8], descriptor: &[u8]| {
        let mut body = field(&latin1("2.0.2"));
        for jsonb in [path, &latin1("1.0.0")[..], method, descriptor] {
            body.extend(field(jsonb));
        }
        body
    };
    let map_argument = object(&[(latin1("group"), latin1("public"))]);
    let attachments = object(&[
        (latin1("path"), latin1("demo.Greeter")),
        (latin1("group"), latin1("admin")),
    ]);
    let cases = [
        (
            "the path",
            [
                fields(&broken, &latin1("sayHello"), &latin1("Ljava/util/Map;")),
                field(&map_argument),
                field(&object(&[(latin1("group"), latin1("admin"))])),
            ]
            .concat(),
        ),
        (
            "the method",
            [
                fields(
                    &latin1("demo.Greeter"),
                    &utf8_bytes(&[0xff]),
                    &latin1("Ljava/util/Map;"),
                ),
                field(&map_argument),
                field(&attachments),
            ]
            .concat(),
        ),
        (
            "the descriptor",
            [
                fields(&latin1("demo.Greeter"), &latin1("sayHello"), &broken),
                field(&map_argument),
                field(&attachments),
            ]
            .concat(),
        ),
    ];
    for (what, body) in cases {
        let call = decode(&frame(1, &body))?;
        assert_eq!(
            call.reject_reason,
            Some(
                "a call field (service path, version, method or parameter types) is a string that cannot be decoded"
            ),
            "{what}: {:?}",
            call.metadata
        );
        assert!(call.metadata.is_empty(), "{what}");
    }
    Ok(())
}

/// A JSONB UTF-8 string (`0x7a`) of `bytes`, UTF-8 or not.
fn utf8_bytes(bytes: &[u8]) -> Vec<u8> {
    [vec![0x7a], int32(bytes.len() as i32), bytes.to_vec()].concat()
}

/// Calls without attachments, with null ones, or with a typed map are read too.
#[test]
fn fastjson2_attachments_may_be_missing_null_or_typed() -> TestResult {
    let bare = decode(&frame(2, &call_head()))?;
    assert_eq!(bare.reject_reason, None);
    assert_eq!(bare.metadata.get("method"), Some("sayHello"));
    let null = decode(&frame(3, &[call_head(), field(&[0xaf])].concat()))?;
    assert_eq!(null.reject_reason, None);
    let typed_map = [
        vec![0x92],
        latin1("java.util.LinkedHashMap"),
        int32(0),
        object(&[(latin1("tenant"), latin1("t9"))]),
    ]
    .concat();
    let typed = decode(&frame(4, &[call_head(), field(&typed_map)].concat()))?;
    assert_eq!(typed.reject_reason, None);
    assert_eq!(typed.metadata.get("tenant"), Some("t9"));
    // Arguments of any shape are skipped by their length.
    let mut body = Vec::new();
    for text in ["2.0.2", "demo.Greeter", "", "put", "Ljava/util/Map;IZ"] {
        body.extend(field(&latin1(text)));
    }
    body.extend(field(&[0xa6, 0x7f, 0x4b, b'i', b'd', 0x01, 0x02, 0xa5]));
    body.extend(field(&int32(7)));
    body.extend(field(&[0xb1]));
    body.extend(field(&object(&[(latin1("tenant"), latin1("t3"))])));
    let call = decode(&frame(5, &body))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("tenant"), Some("t3"));
    assert_eq!(call.metadata.get("version"), Some(""));
    Ok(())
}

/// A null version field names the export without a version, as in a Hessian2 call: Java's
/// fastjson2 reader reads it as no string, as Hessian's does.
#[test]
fn a_null_fastjson2_version_field_names_the_unversioned_service() -> TestResult {
    let mut body = Vec::new();
    body.extend(field(&latin1("2.0.2")));
    body.extend(field(&latin1("demo.Greeter")));
    body.extend(field(&[0xaf]));
    for text in ["sayHello", "Ljava/lang/String;", "world"] {
        body.extend(field(&latin1(text)));
    }
    body.extend(field(&object(&[(latin1("path"), latin1("demo.Greeter"))])));
    let call = decode(&frame(1, &body))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("version"), Some(""));
    Ok(())
}

/// A null `version` or `group` attachment is none to a Java provider, as in a Hessian2 call:
/// the call says the empty version (the export without one runs), or no group, whatever came
/// before it.
#[test]
fn a_null_fastjson2_version_or_group_attachment_names_the_export_without_one() -> TestResult {
    let null = || vec![0xaf];
    let call = decode(&call_with(&[(latin1("version"), null())]))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("version"), Some(""));
    let call = decode(&call_with(&[
        (latin1("version"), latin1("2.0.0")),
        (latin1("group"), latin1("g1")),
        (latin1("version"), null()),
        (latin1("group"), null()),
    ]))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("version"), Some(""));
    assert_eq!(call.metadata.get("group"), None);
    Ok(())
}

/// A body that cannot be read is refused with a reason, never a panic or a closed stream.
#[test]
fn a_malformed_fastjson2_body_is_refused() -> TestResult {
    let head = call_head();
    let cases: Vec<Vec<u8>> = vec![
        // A call field's length past the body.
        vec![0, 0, 0, 9, 0x4e],
        // A call field's length cut.
        vec![0, 0],
        // A call field that is no string.
        field(&int32(1)),
        // A call field with bytes after its string.
        field(&[0x4a, b'x', 0xaf]),
        // Fewer arguments than the descriptor says.
        head[..head.len() - 10].to_vec(),
        // Attachments that are not a map, or cut, or nested arrays never ended.
        [head.clone(), field(&int32(1))].concat(),
        [head.clone(), field(&[0xa6, 0x4a, b'k'])].concat(),
        [
            head.clone(),
            field(&[vec![0xa6, 0x4a, b'k'], vec![0x96; 200]].concat()),
        ]
        .concat(),
        // A string whose length is negative or past its field.
        [
            head.clone(),
            field(&[0xa6, 0x79, 0x48, 0xff, 0xff, 0xff, 0xff, 0xa5]),
        ]
        .concat(),
        [head.clone(), field(&[0xa6, 0x79, 0x3f, 0xff, 0xa5])].concat(),
        // An unknown tag.
        [head.clone(), field(&[0xa6, 0x4a, b'k', 0xaa, 0xa5])].concat(),
    ];
    for body in cases {
        let call = decode(&frame(9, &body))?;
        assert!(call.reject_reason.is_some(), "{body:02x?}");
        assert!(call.metadata.is_empty());
    }
    Ok(())
}

/// A JSONB value `levels` deep: arrays of one, objects holding the next as their value, arrays
/// of two holding it first, and typed values, in turn, around a null.
fn nested(levels: usize) -> Vec<u8> {
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    for level in 0..levels {
        match level % 4 {
            0 => head.push(0x95),
            1 => {
                head.extend([0xa6, 0x4a, b'k']);
                tail.push(0xa5);
            }
            2 => {
                head.push(0x96);
                tail.push(0xaf);
            }
            // A type name given as a symbol at the first level, named by its number after.
            _ if level == 3 => head.extend([0x92, 0x49, 0x00]),
            _ => head.extend([0x92, 0x00]),
        }
    }
    head.push(0xaf);
    tail.reverse();
    [head, tail].concat()
}

/// fastjson2 writes values up to 2048 levels deep and Java's reader takes them: a call whose
/// attachment (or a key that is no string) nests 100 or 10,000 levels is read to its end, the
/// entries after it too, and a mutation of it is written, as a response's.
#[test]
fn values_nested_deeper_than_64_are_read_to_their_end() -> TestResult {
    for levels in [100, 10_000] {
        let deep = nested(levels);
        let bytes = call_with(&[
            (latin1("deep"), deep.clone()),
            (deep.clone(), latin1("v")),
            (latin1("group"), latin1("g1")),
        ]);
        let call = decode(&bytes)?;
        assert_eq!(call.reject_reason, None, "{levels} levels");
        assert_eq!(call.metadata.get("group"), Some("g1"), "{levels} levels");
        let mut mutation = Mutation::new();
        mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
        let again = decode(&mutated(&call, &mutation)?)?;
        assert_eq!(again.reject_reason, None, "{levels} levels, mutated");
        assert_eq!(again.metadata.get("tenant"), Some("t2"), "{levels} levels");
        assert_eq!(again.metadata.get("group"), Some("g1"), "{levels} levels");
        let map = object(&[(latin1("deep"), deep), (latin1("trace"), latin1("abc"))]);
        let body = [field(&int32(4)), field(&latin1("hi")), field(&map)].concat();
        let answer = decode(&response(&body))?;
        assert_eq!(
            answer.metadata.get("trace"),
            Some("abc"),
            "{levels} levels, answer"
        );
    }
    Ok(())
}

/// Java's reader reads a decimal's unscaled value as a big integer
/// (`JSONReaderJSONB.readBigInteger`): a number of any width (a double or float cut to an
/// integer), a boolean, a binary, a string in ASCII, UTF-8 or UTF-16LE (parsed), or another
/// decimal, read by recursion, so a chain of them as deep as its stack allows. Anything else
/// fails the provider's read (null by a NullPointerException; a long decimal, UTF-16 with a
/// byte order mark or big-endian, GB18030, a symbol, a char, a date, an array, an object, a
/// typed value or a reference are no type it supports): such a call is refused, not forwarded
/// for the provider to fail, and a chain longer than the walk's levels (a hundred thousand
/// decimals, 200 KB, which overflowed the proxy's stack before 41044a9 and Java's stack still)
/// is refused as a value nested too deep.
#[test]
fn a_fastjson2_decimal_is_read_as_javas_reader_reads_it() -> TestResult {
    let decimal = |unscaled: &[u8]| [&[0xb9, 0x00][..], unscaled].concat();
    let chain = |links: usize| [[0xb9, 0x00].repeat(links), vec![0x01]].concat();
    let read: Vec<Vec<u8>> = vec![
        vec![0x01],
        vec![0xbd, 0x05],
        int32(70_000),
        vec![0xbb, 0x02, 0x01, 0x00],
        vec![0xba, 0x01],
        vec![0xb1],
        vec![0xb5, 0, 0, 0, 0, 0, 0, 0, 0],
        vec![0x91, 0x01, 0x05],
        latin1("12"),
        utf8("12"),
        [vec![0x7c], int32(4), vec![b'1', 0, b'2', 0]].concat(),
        chain(1),
        // With the decimal holding it, 65,536 decimals.
        chain((1 << 16) - 1),
    ];
    for unscaled in read {
        let value = decimal(&unscaled);
        let call = decode(&call_with(&[
            (latin1("d"), value),
            (latin1("group"), latin1("g1")),
        ]))?;
        assert_eq!(
            call.reject_reason,
            None,
            "{:02x?}",
            &unscaled[..unscaled.len().min(8)]
        );
        assert_eq!(call.metadata.get("group"), Some("g1"));
    }
    let refused: Vec<Vec<u8>> = vec![
        vec![0xaf],
        vec![0xb8, 0x01],
        vec![0xa6, 0xa5],
        vec![0x94],
        vec![0x95, 0x01],
        [vec![0x92], latin1("java.math.BigInteger"), vec![0x01]].concat(),
        vec![0x90, 0x41],
        [vec![0x7b], int32(2), vec![0, b'1']].concat(),
        [vec![0x7d], int32(2), vec![0, b'1']].concat(),
        [vec![0x7e], int32(1), vec![b'1']].concat(),
        vec![0xa9, 0x07, 0xe8, 0x01, 0x01],
    ];
    for unscaled in refused {
        let call = decode(&call_with(&[(latin1("d"), decimal(&unscaled))]))?;
        assert_eq!(
            call.reject_reason,
            Some("a fastjson2 decimal's unscaled value is no number Java's reader takes"),
            "{unscaled:02x?}"
        );
    }
    for links in [(1 << 16) + 1, 100_000] {
        let call = decode(&call_with(&[(latin1("d"), chain(links))]))?;
        assert_eq!(
            call.reject_reason,
            Some("a value nests more than 65,536 levels deep, deeper than a Java provider reads"),
            "a chain of {links} decimals"
        );
    }
    Ok(())
}

/// The walk keeps 65,536 levels at most, as for Hessian2: an attachment of arrays nested
/// deeper is refused (a Java provider's reader overflows its stack first), one nested that
/// deep is read.
#[test]
fn values_nested_deeper_than_the_walk_keeps_are_refused() -> TestResult {
    const LEVELS: usize = 1 << 16;
    for (levels, refused) in [
        (LEVELS, None),
        (
            LEVELS + 1,
            Some("a value nests more than 65,536 levels deep, deeper than a Java provider reads"),
        ),
    ] {
        // Arrays of two, each holding the next as its first item and null as its second.
        let deep = [vec![0x96; levels], vec![0xaf; levels + 1]].concat();
        let call = decode(&call_with(&[
            (latin1("deep"), deep),
            (latin1("group"), latin1("g1")),
        ]))?;
        assert_eq!(call.reject_reason, refused, "{levels} levels");
    }
    Ok(())
}

/// `call` forwarded with request id 7 and `mutation`, or the encode error.
fn mutated(call: &Message, mutation: &Mutation) -> Result<BytesMut, CodecError> {
    let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES);
    let params = EncodeParams {
        request_id: 7,
        mutation,
        variant: WireVariant::default(),
    };
    let mut out = BytesMut::new();
    codec.encode(call, &params, &mut out)?;
    Ok(out)
}

/// A mutation of a fastjson2 call's attachments is written into its JSONB map: the entries it
/// leaves are kept byte for byte, removed ones go, sets come last as JSONB strings, and the
/// map's and the body's lengths follow. The call fields and arguments travel as they came.
#[test]
fn a_mutation_of_a_fastjson2_call_rewrites_its_attachments() -> TestResult {
    let kept = (latin1("kept"), int32(3000));
    let bytes = call_with(&[
        (latin1("tenant"), latin1("t1")),
        kept.clone(),
        (latin1("gone"), utf16le("中文")),
    ]);
    let call = decode(&bytes)?;
    let mut mutation = Mutation::new();
    mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
    mutation.set(
        ByteStr::from_static("x-routed"),
        ByteStr::from_static("été"),
    );
    mutation.remove(ByteStr::from_static("gone"));
    let out = mutated(&call, &mutation)?;
    let again = decode(&out)?;
    assert_eq!(again.reject_reason, None);
    assert_eq!(again.request_id, 7);
    let text = |key| again.metadata.get(key);
    assert_eq!(text("tenant"), Some("t2"));
    assert_eq!(text("x-routed"), Some("été"));
    assert_eq!(text("gone"), None);
    assert_eq!(text("kept"), Some("3000"));
    assert_eq!(text("method"), Some("sayHello"));
    // The body up to the map as it came, then the map: path and kept as they came, then the
    // sets, ASCII as a Latin-1 string and other text in UTF-8.
    let head = call_head();
    assert_eq!(out[16..16 + head.len()], head[..]);
    let map = object(&[
        (latin1("path"), latin1("demo.Greeter")),
        kept,
        (latin1("tenant"), latin1("t2")),
        (latin1("x-routed"), utf8("été")),
    ]);
    assert_eq!(out[16 + head.len()..], field(&map)[..]);
    assert_eq!(
        out[12..16],
        ((head.len() + map.len() + 4) as u32).to_be_bytes()
    );
    // An empty mutation forwards the frame as it came, but for its id.
    let out = mutated(&call, &Mutation::new())?;
    assert_eq!(out[16..], bytes[16..]);
    Ok(())
}

/// A call without attachments, or with null ones, gains a map; a typed map keeps its type; a
/// set `path` renames the call's path field too, as for a Hessian2 call.
#[test]
fn a_mutation_adds_a_fastjson2_map_and_renames_the_path() -> TestResult {
    let mut mutation = Mutation::new();
    mutation.set(ByteStr::from_static("tenant"), ByteStr::from_static("t2"));
    let typed_map = |entries: &[(Vec<u8>, Vec<u8>)]| {
        [
            vec![0x92],
            latin1("java.util.LinkedHashMap"),
            int32(0),
            object(entries),
        ]
        .concat()
    };
    let cases = [
        (call_head(), object(&[(latin1("tenant"), latin1("t2"))])),
        (
            [call_head(), field(&[0xaf])].concat(),
            object(&[(latin1("tenant"), latin1("t2"))]),
        ),
        (
            [
                call_head(),
                field(&typed_map(&[(latin1("tenant"), latin1("t1"))])),
            ]
            .concat(),
            typed_map(&[(latin1("tenant"), latin1("t2"))]),
        ),
    ];
    for (body, map) in cases {
        let out = mutated(&decode(&frame(2, &body))?, &mutation)?;
        let head = call_head();
        assert_eq!(out[16..], [head, field(&map)].concat()[..]);
        assert_eq!(decode(&out)?.metadata.get("tenant"), Some("t2"));
    }
    let mut rename = Mutation::new();
    rename.set(
        ByteStr::from_static("path"),
        ByteStr::from_static("demo.Other"),
    );
    let out = mutated(&decode(&call_with(&[]))?, &rename)?;
    let again = decode(&out)?;
    assert_eq!(again.reject_reason, None);
    assert_eq!(again.metadata.get("interface"), Some("demo.Other"));
    assert_eq!(again.metadata.get("service"), Some("demo.Other"));
    Ok(())
}

/// An entry that a JSONB reference or a symbol number elsewhere in the map may point at is
/// not removed or replaced: the call fails with an encode error that says why. Adding an
/// entry, or removing one nothing points at, is written.
#[test]
fn a_fastjson2_entry_others_point_at_is_not_removed() -> TestResult {
    let type_def = [vec![0x92], latin1("demo.Tag"), int32(1), object(&[])].concat();
    let type_use = [vec![0x92], int32(1), object(&[])].concat();
    // Within an object: a reference as an attachment's own value refuses the call.
    let reference = object(&[(latin1("r"), [vec![0x93], latin1("$.tag")].concat())]);
    let cases = [
        (latin1("tag"), type_def.clone(), latin1("again"), type_use),
        (latin1("tag"), object(&[]), latin1("again"), reference),
    ];
    for (key, value, other_key, other_value) in cases {
        let call = decode(&call_with(&[
            (key, value),
            (other_key, other_value),
            (latin1("tenant"), latin1("t1")),
        ]))?;
        assert_eq!(call.reject_reason, None);
        let mut remove = Mutation::new();
        remove.remove(ByteStr::from_static("tag"));
        match mutated(&call, &remove) {
            Err(CodecError::Encode(reason)) => assert!(reason.contains("fastjson2"), "{reason}"),
            other => return Err(format!("expected an encode error, got {other:?}").into()),
        }
        let mut others = Mutation::new();
        others.remove(ByteStr::from_static("tenant"));
        others.set(ByteStr::from_static("x-new"), ByteStr::from_static("1"));
        let again = decode(&mutated(&call, &others)?)?;
        assert_eq!(again.metadata.get("tenant"), None);
        assert_eq!(again.metadata.get("x-new"), Some("1"));
    }
    // A symbol defined in an entry nothing points at goes with its entry.
    let call = decode(&call_with(&[(latin1("tag"), type_def)]))?;
    let mut remove = Mutation::new();
    remove.remove(ByteStr::from_static("tag"));
    let again = decode(&mutated(&call, &remove)?)?;
    assert_eq!(again.reject_reason, None);
    Ok(())
}

/// A fastjson2 response with status 20 is judged by its result flag (its first value, a JSONB
/// int, as Dubbo writes a byte): an exception (0, or 3 with attachments) is an application
/// error, a value or null (1, 2, 4, 5) a success, and a flag that cannot be read a server
/// error, as for a Hessian2 response.
#[test]
fn fastjson2_responses_are_judged_by_their_result_flag() -> TestResult {
    use metaprotocol_core::ResponseStatus;
    let exception = [
        vec![0x92],
        latin1("java.lang.IllegalStateException"),
        int32(0),
        object(&[(latin1("message"), latin1("boom"))]),
    ]
    .concat();
    let cases: [(Vec<u8>, ResponseStatus); 8] = [
        (field(&[0xbd, 0x00]), ResponseStatus::ApplicationError),
        (field(&[0x00]), ResponseStatus::ApplicationError),
        (field(&[0x03]), ResponseStatus::ApplicationError),
        (field(&[0x01]), ResponseStatus::Ok),
        (field(&[0xbd, 0x02]), ResponseStatus::Ok),
        (field(&[0x05]), ResponseStatus::Ok),
        (field(&[0x07]), ResponseStatus::ServerError),
        (field(&latin1("1")), ResponseStatus::ServerError),
    ];
    for (flag, status) in cases {
        let mut frame = vec![0xda, 0xbb, 23, 20];
        frame.extend_from_slice(&5_u64.to_be_bytes());
        let body = [flag.clone(), field(&exception)].concat();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        let response = decode(&frame)?;
        assert_eq!(response.kind, MessageKind::Response);
        assert_eq!(response.status, status, "{flag:02x?}");
    }
    Ok(())
}

/// Decodes `body` as a fastjson2 call's, whatever it holds: the frame is delimited, so the
/// decoder takes it whole, and never panics.
fn decodes_whole(body: &[u8]) -> Result<Message, proptest::test_runner::TestCaseError> {
    let call = decode(&frame(1, body))
        .map_err(|error| proptest::test_runner::TestCaseError::fail(error.to_string()))?;
    if call.reject_reason.is_some() {
        proptest::prop_assert!(call.metadata.is_empty());
    }
    Ok(call)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

    /// A sound call with bytes overwritten and its end cut anywhere.
    #[test]
    fn a_damaged_fastjson2_call_never_panics(
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..8),
        cut in proptest::prelude::any::<usize>(),
    ) {
        let hex = include_str!("testdata/fastjson2/dubbo32-sayhello.req.hex");
        let sound = hex::decode(hex.trim()).unwrap_or_default();
        let typed = [
            vec![0x92],
            latin1("java.util.LinkedHashMap"),
            int32(0),
            object(&[
                (latin1("tenant"), utf16le("中文")),
                (latin1("deep"), vec![0x95, 0x95, 0xa6, 0x4a, b'k', 0xab, 0, 0, 0, 0, 0, 0, 0, 1, 0xa5]),
                (latin1("n"), vec![0xb9, 0x02, 0xbb, 0x01, 0xff]),
            ]),
        ]
        .concat();
        for mut body in [sound[16..].to_vec(), [call_head(), field(&typed)].concat()] {
            for (at, byte) in &edits {
                let len = body.len();
                if let Some(slot) = body.get_mut(at % len) {
                    *slot = *byte;
                }
            }
            body.truncate(cut % (body.len() + 1));
            decodes_whole(&body)?;
        }
    }

    /// Any JSONB bytes as the attachments of a sound call.
    #[test]
    fn any_fastjson2_attachments_never_panic(map in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        decodes_whole(&[call_head(), field(&[&[0xa6][..], &map].concat())].concat())?;
        decodes_whole(&[call_head(), field(&map)].concat())?;
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(1000))]

    /// Any JSONB bytes as the attachments of a sound call, mutated: the rewrite is refused with
    /// an encode error or decodes to the mutated metadata, the call fields and argument as they
    /// came; it never panics.
    #[test]
    fn a_mutated_fastjson2_call_decodes_to_the_mutation(
        map in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        typed in proptest::prelude::any::<bool>(),
    ) {
        let prefix: &[u8] = if typed { &[0x92, 0x49, 0x00, 0xa6] } else { &[0xa6] };
        let mut entries = [prefix, &map].concat();
        entries.extend(latin1("tenant"));
        entries.extend(latin1("t1"));
        entries.push(0xa5);
        let call = decodes_whole(&[call_head(), field(&entries)].concat())?;
        if call.reject_reason.is_none() {
            let mut mutation = Mutation::new();
            mutation.remove(ByteStr::from_static("tenant"));
            mutation.set(ByteStr::from_static("x-new"), ByteStr::from_static("中"));
            if let Ok(out) = mutated(&call, &mutation) {
                let again = decode(&out)
                    .map_err(|error| proptest::test_runner::TestCaseError::fail(error.to_string()))?;
                proptest::prop_assert_eq!(again.reject_reason, None);
                proptest::prop_assert_eq!(again.metadata.get("tenant"), None);
                proptest::prop_assert_eq!(again.metadata.get("x-new"), Some("中"));
                proptest::prop_assert_eq!(again.metadata.get("method"), Some("sayHello"));
                let head = call_head();
                proptest::prop_assert_eq!(&out[16..16 + head.len()], &head[..]);
            }
        }
    }
}

/// A fastjson2 response with status 20 and `body`.
fn response(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xda, 0xbb, 23, 20];
    frame.extend_from_slice(&5_u64.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// The attachments of a fastjson2 response (result flags 3, 4 and 5) are its metadata, read as
/// a Hessian2 response's are; attachments that cannot be read leave it empty, the response
/// judged by its flag.
#[test]
fn fastjson2_response_attachments_are_metadata() -> TestResult {
    use metaprotocol_core::ResponseStatus;
    let map = field(&object(&[
        (latin1("trace"), latin1("abc")),
        (latin1("version"), int32(2)),
        (latin1("gone"), vec![0xaf]),
    ]));
    let exception = [
        vec![0x92],
        latin1("java.lang.IllegalStateException"),
        int32(0),
        object(&[(latin1("message"), latin1("boom"))]),
    ]
    .concat();
    let cases = [
        (
            [field(&[0x04]), field(&latin1("hi")), map.clone()].concat(),
            ResponseStatus::Ok,
        ),
        ([field(&[0x05]), map.clone()].concat(), ResponseStatus::Ok),
        (
            [field(&[0x03]), field(&exception), map.clone()].concat(),
            ResponseStatus::ApplicationError,
        ),
    ];
    for (body, status) in cases {
        let answer = decode(&response(&body))?;
        assert_eq!(answer.status, status, "{body:02x?}");
        let text = |key| answer.metadata.get(key);
        assert_eq!(text("trace"), Some("abc"), "{body:02x?}");
        assert_eq!(text("version"), Some("2"));
        assert_eq!(text("gone"), None);
    }
    // Without attachments, or with attachments that cannot be read.
    let cases = [
        [field(&[0x01]), field(&latin1("hi"))].concat(),
        [field(&[0x04]), field(&latin1("hi")), field(&[0xa6, 0x4a])].concat(),
        [field(&[0x04]), field(&latin1("hi"))].concat(),
    ];
    for body in cases {
        let answer = decode(&response(&body))?;
        assert_eq!(answer.status, ResponseStatus::Ok, "{body:02x?}");
        assert!(answer.metadata.is_empty(), "{body:02x?}");
    }
    Ok(())
}

/// A response mutation (a route's `response_mutation`, a filter's edit) is written into a
/// fastjson2 response as into a Hessian2 one, for a client that reads response attachments:
/// the result flag announces attachments (a flag without them gains 3, written as Dubbo writes
/// a byte), the result travels as it came, and the map keeps the entries the mutation leaves
/// byte for byte, then the sets. A client that reads no response attachments, and a response
/// whose attachments cannot be read, get the response as it came.
#[test]
fn a_mutation_of_a_fastjson2_response_rewrites_its_attachments() -> TestResult {
    use metaprotocol_dubbo::READS_RESPONSE_ATTACHMENTS;
    let mut mutation = Mutation::new();
    mutation.set(
        ByteStr::from_static("x-served-by"),
        ByteStr::from_static("proxy"),
    );
    mutation.set(ByteStr::from_static("note"), ByteStr::from_static("été"));
    mutation.remove(ByteStr::from_static("gone"));
    let encode = |answer: &Message, variant| -> Result<BytesMut, CodecError> {
        let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES);
        let params = EncodeParams {
            request_id: 7,
            mutation: &mutation,
            variant,
        };
        let mut out = BytesMut::new();
        codec.encode(answer, &params, &mut out)?;
        Ok(out)
    };
    let result = field(&latin1("hi"));
    let exception = field(
        &[
            vec![0x92],
            latin1("java.lang.IllegalStateException"),
            int32(0),
            object(&[(latin1("message"), latin1("boom"))]),
        ]
        .concat(),
    );
    let kept = [
        (latin1("dubbo"), latin1("2.0.2")),
        (latin1("count"), int32(3000)),
    ];
    let sets = [
        (latin1("x-served-by"), latin1("proxy")),
        (latin1("note"), utf8("été")),
    ];
    let with_gone = [
        kept[0].clone(),
        (latin1("gone"), utf16le("中文")),
        kept[1].clone(),
    ];
    let map = |entries: &[(Vec<u8>, Vec<u8>)]| field(&object(entries));
    let rewritten = [&kept[..], &sets].concat();
    let cases = [
        // A value with attachments, the flag as a JSONB int8 (Dubbo's byte) or one-byte int.
        (
            [field(&[0xbd, 0x04]), result.clone(), map(&with_gone)].concat(),
            [field(&[0xbd, 0x04]), result.clone(), map(&rewritten)].concat(),
        ),
        (
            [field(&[0x05]), map(&with_gone)].concat(),
            [field(&[0x05]), map(&rewritten)].concat(),
        ),
        (
            [field(&[0x03]), exception.clone(), map(&with_gone)].concat(),
            [field(&[0x03]), exception.clone(), map(&rewritten)].concat(),
        ),
        // Without attachments: the flag gains them, the map comes after the result.
        (
            [field(&[0xbd, 0x01]), result.clone()].concat(),
            [field(&[0xbd, 0x04]), result.clone(), map(&sets)].concat(),
        ),
        (field(&[0x02]), [field(&[0xbd, 0x05]), map(&sets)].concat()),
        (
            [field(&[0x00]), exception.clone()].concat(),
            [field(&[0xbd, 0x03]), exception.clone(), map(&sets)].concat(),
        ),
    ];
    for (body, expected) in cases {
        let answer = decode(&response(&body))?;
        let out = encode(&answer, READS_RESPONSE_ATTACHMENTS)?;
        assert_eq!(out[16..], expected[..], "{body:02x?}");
        assert_eq!(out[4..12], 7_u64.to_be_bytes());
        let again = decode(&out)?;
        assert_eq!(again.status, answer.status);
        assert_eq!(again.metadata.get("x-served-by"), Some("proxy"));
        assert_eq!(again.metadata.get("note"), Some("été"));
        assert_eq!(again.metadata.get("gone"), None);
        // A client that reads no response attachments gets it as it came.
        let out = encode(&answer, WireVariant::default())?;
        assert_eq!(out[16..], response(&body)[16..]);
    }
    // Attachments that cannot be read (broken, or with a reference the codec does not follow,
    // so none are metadata), or a flag that cannot: the response as it came.
    let reference = [vec![0x93], latin1("$.dubbo")].concat();
    for body in [
        [field(&[0x04]), result.clone(), field(&[0xa6, 0x4a])].concat(),
        [
            field(&[0x04]),
            result.clone(),
            map(&[kept[0].clone(), (latin1("again"), reference)]),
        ]
        .concat(),
        [field(&[0x07]), result.clone()].concat(),
    ] {
        let answer = decode(&response(&body))?;
        let out = encode(&answer, READS_RESPONSE_ATTACHMENTS)?;
        assert_eq!(out[16..], response(&body)[16..], "{body:02x?}");
    }
    Ok(())
}

/// A key or a string value given as a JSONB symbol (a string and its number), or used by the
/// number of one given before, reads as that string, as the provider's reader resolves it: an
/// attachment the provider sees is never hidden from routes and policies. A number given no
/// string before it, and an attachment whose value is a reference (which the codec does not
/// follow), refuse the call.
#[test]
fn symbols_read_as_their_strings_and_what_cannot_be_read_is_refused() -> TestResult {
    let symbol = |text: &str, number: i32| [vec![0x7f], latin1(text), int32(number)].concat();
    let number = |number: i32| [vec![0x7f], int32(number)].concat();
    let call = decode(&call_with(&[
        (symbol("tenant", 1), latin1("t1")),
        (latin1("x-user"), symbol("admin", 2)),
        (latin1("x-again"), number(2)),
        (number(1), latin1("t2")),
    ]))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("x-user"), Some("admin"));
    assert_eq!(call.metadata.get("x-again"), Some("admin"));
    assert_eq!(
        call.metadata.get("tenant"),
        Some("t2"),
        "the key's last value"
    );
    // `group` given by number, hiding the value the provider runs.
    let hidden_group = decode(&call_with(&[
        (symbol("group", 1), latin1("allowed")),
        (number(1), latin1("secret")),
    ]))?;
    assert_eq!(hidden_group.metadata.get("group"), Some("secret"));
    for (entries, reason) in [
        (vec![(number(7), latin1("x"))], "names no symbol"),
        (vec![(latin1("x"), number(7))], "names no symbol"),
        (
            vec![(latin1("x-user"), [vec![0x93], latin1("$.a")].concat())],
            "reference",
        ),
    ] {
        let refused = decode(&call_with(&entries))?;
        let got = refused.reject_reason.unwrap_or_default();
        assert!(got.contains(reason), "{got}");
    }
    Ok(())
}

/// A fastjson2 call's `_TO` is its deadline, as a Hessian2 call's is, and an attempt that waits
/// less goes with the wait in its place, written into the JSONB attachments.
#[test]
fn a_fastjson2_calls_countdown_is_its_deadline_and_an_attempt_tells_its_wait() -> TestResult {
    let bytes = call_with(&[
        (latin1("_TO"), int32(1000)),
        (latin1("tenant"), latin1("t1")),
    ]);
    let call = decode(&bytes)?;
    assert_eq!(call.timeout, Some(std::time::Duration::from_millis(1000)));
    let mut dst = BytesMut::new();
    let params = EncodeParams {
        request_id: 4,
        variant: WireVariant::DEFAULT,
        mutation: &Mutation::new(),
    };
    let wait = std::time::Duration::from_millis(120);
    let mut codec = DubboCodec::new(DEFAULT_MAX_FRAME_BYTES);
    codec.encode_within(&call, &params, wait, true, &mut dst)?;
    let told = decode(&dst)?;
    assert_eq!(told.request_id, 4);
    assert_eq!(told.metadata.get("_TO"), Some("120"));
    assert_eq!(told.metadata.get("tenant"), Some("t1"));
    assert_eq!(told.timeout, Some(wait));

    // Without `_TO`, a string `timeout` is the deadline, an int one (seconds, from dubbo2.js)
    // none.
    let text = decode(&call_with(&[(latin1("timeout"), latin1("700"))]))?;
    assert_eq!(text.timeout, Some(std::time::Duration::from_millis(700)));
    let int = decode(&call_with(&[(latin1("timeout"), int32(3))]))?;
    assert_eq!(int.timeout, None);
    Ok(())
}

/// A JSONB string tagged GB18030 (`0x7e`), of these bytes: a Java reader decodes it with the
/// GB18030 charset, whose bytes 0x00 to 0x7f are ASCII.
fn gb18030(bytes: &[u8]) -> Vec<u8> {
    [vec![0x7e], int32(bytes.len() as i32), bytes.to_vec()].concat()
}

/// A key or value the provider reads is never hidden from routes and policies: a GB18030
/// string of ASCII bytes reads as that ASCII (a key `path` or `group` is checked as the
/// provider's `path` or `group`), and a key or text value the codec cannot decode (GB18030 past
/// ASCII, UTF-8 that is not, a lone UTF-16 surrogate) refuses the call rather than leave the
/// key out or its earlier value in place.
#[test]
fn a_fastjson2_attachment_in_any_encoding_is_read_or_refused() -> TestResult {
    for (entries, reason) in [
        (
            vec![(gb18030(b"path"), latin1("demo.Admin"))],
            "the path attachment names another service than the call",
        ),
        (
            vec![(gb18030(b"group"), int32(1))],
            "the group attachment is not a UTF-8 string",
        ),
        (
            vec![(gb18030(b"sys_callback_arg-1"), latin1("1"))],
            "callback arguments",
        ),
        (
            vec![(gb18030(&[0xd6, 0xd0]), latin1("v"))],
            "cannot be decoded",
        ),
        (
            vec![
                (latin1("x-user"), latin1("guest")),
                (latin1("x-user"), gb18030(&[0xd6, 0xd0])),
            ],
            "cannot be decoded",
        ),
        (
            vec![
                (latin1("x-user"), latin1("guest")),
                (
                    latin1("x-user"),
                    [vec![0x7a], int32(1), vec![0xff]].concat(),
                ),
            ],
            "cannot be decoded",
        ),
        (
            vec![(
                [vec![0x7c], int32(2), vec![0x00, 0xd8]].concat(),
                latin1("v"),
            )],
            "cannot be decoded",
        ),
    ] {
        let call = decode(&call_with(&entries))?;
        let refused = call.reject_reason.unwrap_or_default();
        assert!(refused.contains(reason), "{refused:?} for {reason:?}");
        assert!(call.metadata.is_empty());
    }
    let call = decode(&call_with(&[
        (gb18030(b"group"), gb18030(b"g1")),
        (latin1("x-user"), latin1("guest")),
        (latin1("x-user"), gb18030(b"admin")),
    ]))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("group"), Some("g1"));
    assert_eq!(
        call.metadata.get("x-user"),
        Some("admin"),
        "the key's last value"
    );
    Ok(())
}

/// A key's later value replaces its earlier one, as in the provider's map, whatever its type:
/// a value that is not metadata (a list, a map, a binary) leaves the key out, not at its
/// earlier text, and a number after a string is the number's text.
#[test]
fn a_fastjson2_attachments_last_value_wins_whatever_its_type() -> TestResult {
    let call = decode(&call_with(&[
        (latin1("x-user"), latin1("guest")),
        (latin1("x-user"), vec![0x96, 0x01, 0x02]),
        (latin1("x-role"), utf16le("reader")),
        (latin1("x-role"), object(&[(latin1("k"), latin1("v"))])),
        (latin1("x-id"), latin1("guest")),
        (latin1("x-id"), int32(7)),
        (latin1("x-bin"), latin1("guest")),
        (latin1("x-bin"), [vec![0x91], int32(1), vec![0x00]].concat()),
    ]))?;
    assert_eq!(call.reject_reason, None);
    assert_eq!(call.metadata.get("x-user"), None);
    assert_eq!(call.metadata.get("x-role"), None);
    assert_eq!(call.metadata.get("x-bin"), None);
    assert_eq!(call.metadata.get("x-id"), Some("7"));
    Ok(())
}

/// A mutation removing or replacing an attachment takes out every entry of its key, in any
/// encoding: a route stripping an untrusted attachment leaves no copy keyed in GB18030.
#[test]
fn a_mutation_removes_a_fastjson2_attachment_keyed_in_any_encoding() -> TestResult {
    let call = decode(&call_with(&[
        (latin1("x-user"), latin1("guest")),
        (gb18030(b"x-user"), latin1("admin")),
        (utf16le("x-role"), latin1("admin")),
        (latin1("kept"), latin1("k")),
    ]))?;
    assert_eq!(call.reject_reason, None);
    let mut mutation = Mutation::new();
    mutation.remove(ByteStr::from_static("x-user"));
    mutation.set(
        ByteStr::from_static("x-role"),
        ByteStr::from_static("reader"),
    );
    let out = mutated(&call, &mutation)?;
    let head = call_head();
    let map = object(&[
        (latin1("path"), latin1("demo.Greeter")),
        (latin1("kept"), latin1("k")),
        (latin1("x-role"), latin1("reader")),
    ]);
    assert_eq!(out[16 + head.len()..], field(&map)[..]);
    let again = decode(&out)?;
    assert_eq!(again.metadata.get("x-user"), None);
    assert_eq!(again.metadata.get("x-role"), Some("reader"));
    Ok(())
}
