//! The Dubbo codec's heap allocations per call decoded, counted by the counting allocator: a
//! call as a Java consumer sends it (string attachments) and one as dubbo2.js sends it (its
//! `timeout` an int, rendered as text into the metadata's own room), one whose arguments nest
//! objects, lists and maps, and a fastjson2 one whose attachments do, decode without allocating,
//! into a reused message as the engine decodes them and into a new one each. Each test binary
//! counts alone.

use bytes::BytesMut;
use metaprotocol_benches::alloc::{CountingAlloc, Counts, count_this_thread};
use metaprotocol_core::{Codec, Message, MessageKind};
use metaprotocol_dubbo::DubboCodec;
use metaprotocol_dubbo::build::{Call, request};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Calls counted, after as many to warm up.
const CALLS: u64 = 200;

/// `2 * CALLS` copies of `frame`, one after another, as a connection reads them.
fn frames(frame: &[u8]) -> BytesMut {
    let mut wire = BytesMut::new();
    for _ in 0..2 * CALLS {
        wire.extend_from_slice(frame);
    }
    wire
}

/// What decoding the second half of `wire` allocates, after the first: into one reused
/// message, or (`reuse` false) into a new message each.
fn allocations(mut wire: BytesMut, reuse: bool) -> Result<u64, String> {
    let mut codec = DubboCodec::new(1 << 20);
    let mut slot = Message::new(MessageKind::Request, 0, bytes::Bytes::new());
    let mut decode = |slot: &mut Message| {
        let decoded = if reuse {
            codec.decode_into(&mut wire, slot)
        } else {
            codec.decode(&mut wire).map(|message| match message {
                Some(message) => {
                    *slot = message;
                    true
                }
                None => false,
            })
        };
        match decoded {
            Ok(true) if slot.reject_reason.is_none() => Ok(()),
            other => Err(format!("{other:?} {:?}", slot.reject_reason)),
        }
    };
    for _ in 0..CALLS {
        decode(&mut slot)?;
    }
    let before = Counts::now();
    for _ in 0..CALLS {
        decode(&mut slot)?;
    }
    let made = Counts::now().since(before);
    Ok(made.marked + made.marked_reallocs)
}

/// dubbo2.js 2.3.9's call of the golden captures (`dubbojs__node__hello.req.hex`): `timeout`
/// is the int 3, and there are `application`, `x-trace-id` and `tenant` attachments.
fn dubbojs_call() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/golden/dubbo/dubbojs__node__hello.req.hex"
    );
    let hex = std::fs::read_to_string(path)?;
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|at| {
            hex.get(at..at + 2)
                .and_then(|byte| u8::from_str_radix(byte, 16).ok())
                .ok_or_else(|| "not hex".into())
        })
        .collect()
}

/// Appends `text` (at most 31 bytes) as a one-byte-length Hessian2 string.
fn string(body: &mut Vec<u8>, text: &str) {
    body.push(u8::try_from(text.len()).unwrap_or_default());
    body.extend_from_slice(text.as_bytes());
}

/// A body that starts with the call fields of `demo.Api` 1.0.0 `method(descriptor)`.
fn call_body(method: &str, descriptor: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for field in ["2.0.2", "demo.Api", "1.0.0", method, descriptor] {
        string(&mut body, field);
    }
    body
}

/// A two-way Hessian2 request frame, id 1, of `body`.
fn request_frame(body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xda, 0xbb, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or_default().to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// A call whose attachments are numbers rendered into 23 bytes of text: an int `timeout`
/// (`3000`) and a long `tenant-id` (`1234567890123456789`), past the 18 bytes a new
/// metadata holds inline.
fn numbers_call() -> Vec<u8> {
    let mut body = call_body("hi", "");
    body.push(b'H');
    string(&mut body, "path");
    string(&mut body, "demo.Api");
    string(&mut body, "timeout");
    body.extend_from_slice(&[0xd4, 0x0b, 0xb8]);
    string(&mut body, "tenant-id");
    body.push(b'L');
    body.extend_from_slice(&1_234_567_890_123_456_789_i64.to_be_bytes());
    body.push(b'Z');
    request_frame(&body)
}

/// A call whose arguments hold lists, maps and objects as Java's Hessian2Output writes them (each
/// class defined before its first object): an order `{id, items: [{sku, qty}, {sku, qty}],
/// tags: {k: v}}`, and a linked list of twelve nodes whose link is their first field, so that
/// every node is a level the walk over it keeps open.
fn nested_call() -> Vec<u8> {
    let mut body = call_body("place", "Lx/Order;Lx/Node;");
    body.push(b'C');
    string(&mut body, "x.Order");
    body.push(0x93);
    for field in ["id", "items", "tags"] {
        string(&mut body, field);
    }
    // Order {id: 1L, items: a typed list of two, ...
    body.extend_from_slice(&[0x60, 0xe1, 0x72]);
    string(&mut body, "[x.Item");
    body.push(b'C');
    string(&mut body, "x.Item");
    body.push(0x92);
    for field in ["sku", "qty"] {
        string(&mut body, field);
    }
    for (sku, qty) in [("a1", 0x91), ("b2", 0x92)] {
        body.push(0x61);
        string(&mut body, sku);
        body.push(qty);
    }
    // ... tags: {k: v}}
    body.push(b'H');
    string(&mut body, "k");
    string(&mut body, "v");
    body.push(b'Z');
    body.push(b'C');
    string(&mut body, "x.Node");
    body.push(0x92);
    string(&mut body, "next");
    string(&mut body, "value");
    body.extend_from_slice(&[0x62; 12]);
    body.push(b'N');
    body.extend_from_slice(&[0x90; 12]);
    body.push(b'H');
    string(&mut body, "path");
    string(&mut body, "demo.Api");
    body.push(b'Z');
    request_frame(&body)
}

/// A fastjson2 (JSONB) call whose attachments hold an object `{items: [{sku}, {sku}], tags:
/// {k: v}}` and arrays of two twelve deep, the nested array first, so that every array is a
/// level the walk over it keeps open.
fn nested_fastjson2_call() -> Vec<u8> {
    let latin1 = |text: &str| [&[0x49 + text.len() as u8][..], text.as_bytes()].concat();
    let field = |jsonb: &[u8]| [&(jsonb.len() as u32).to_be_bytes()[..], jsonb].concat();
    let mut body = Vec::new();
    for text in [
        "2.0.2",
        "demo.Api",
        "1.0.0",
        "place",
        "Ljava/lang/String;",
        "x",
    ] {
        body.extend(field(&latin1(text)));
    }
    let mut map = vec![0xa6];
    map.extend(latin1("order"));
    map.push(0xa6);
    map.extend(latin1("items"));
    map.push(0x96);
    for sku in ["a1", "b2"] {
        map.push(0xa6);
        map.extend(latin1("sku"));
        map.extend(latin1(sku));
        map.push(0xa5);
    }
    map.extend(latin1("tags"));
    map.extend([&[0xa6][..], &latin1("k"), &latin1("v"), &[0xa5, 0xa5]].concat());
    map.extend(latin1("deep"));
    map.extend([0x96; 12]);
    map.extend([0xaf; 13]);
    map.extend(latin1("path"));
    map.extend(latin1("demo.Api"));
    map.push(0xa5);
    body.extend(field(&map));
    let mut frame = vec![0xda, 0xbb, 0xc0 | 23, 0];
    frame.extend_from_slice(&1_u64.to_be_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend(body);
    frame
}

#[test]
fn calls_decode_without_allocating() -> TestResult {
    count_this_thread();
    // What a Java consumer of Dubbo 3 attaches: path, interface and version (the builder's),
    // the application, the timeout as a string.
    let java = request(
        1,
        true,
        &Call {
            service: "org.apache.dubbo.samples.basic.api.DemoService",
            version: "1.0.0",
            method: "sayHello",
            string_args: &["world"],
            attachments: &[("remote.application", "demo-consumer"), ("timeout", "3000")],
        },
    );
    let dubbojs = dubbojs_call()?;
    let nested = nested_call();
    let fastjson2 = nested_fastjson2_call();
    for (name, frame) in [
        ("java", &java[..]),
        ("dubbo2.js", &dubbojs[..]),
        ("nested arguments", &nested[..]),
        ("nested fastjson2 attachments", &fastjson2[..]),
    ] {
        for reuse in [true, false] {
            let made = allocations(frames(frame), reuse)?;
            assert_eq!(
                made, 0,
                "{name}: {made} allocations, reused message: {reuse}"
            );
        }
    }
    // Rendered text past the inline room: a reused message keeps its heap room for it, a new
    // one allocates it once (what the engine, which reuses its messages, does not pay).
    let numbers = numbers_call();
    assert_eq!(allocations(frames(&numbers), true)?, 0);
    assert_eq!(allocations(frames(&numbers), false)?, CALLS);
    Ok(())
}
