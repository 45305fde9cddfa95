//! Building Dubbo2 frames with Hessian2 bodies: what a Dubbo client and provider write.

use bytes::{BufMut, Bytes, BytesMut};

const MAGIC: [u8; 2] = [0xda, 0xbb];
const FLAG_REQUEST: u8 = 0x80;
const FLAG_TWO_WAY: u8 = 0x40;
const HESSIAN2: u8 = 2;
const STATUS_OK: u8 = 20;
/// Result flag: a value followed by attachments (Dubbo 2.0.2+).
const RESPONSE_VALUE_WITH_ATTACHMENTS: i32 = 4;
/// The largest Hessian string chunk, in UTF-16 units.
const MAX_CHUNK: usize = 0x8000;

/// A minimal Hessian2 writer: the value types Dubbo headers and the demo need.
#[derive(Debug, Default)]
pub struct HessianWriter {
    out: BytesMut,
}

impl HessianWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a string (chunked when long).
    pub fn string(&mut self, s: &str) -> &mut Self {
        let mut rest = s;
        loop {
            // Split at a char boundary so that no chunk holds more than MAX_CHUNK UTF-16 units.
            let (mut units, mut end) = (0usize, 0usize);
            for c in rest.chars() {
                if units + c.len_utf16() > MAX_CHUNK {
                    break;
                }
                units += c.len_utf16();
                end += c.len_utf8();
            }
            let (chunk, tail) = rest.split_at(end);
            let last = tail.is_empty();
            match (last, units) {
                (true, 0..=31) => self.out.put_u8(units as u8),
                (true, 32..=1023) => {
                    self.out.put_u8(0x30 + (units >> 8) as u8);
                    self.out.put_u8(units as u8);
                }
                (true, _) => {
                    self.out.put_u8(b'S');
                    self.out.put_u16(units as u16);
                }
                (false, _) => {
                    self.out.put_u8(b'R');
                    self.out.put_u16(units as u16);
                }
            }
            self.out.put_slice(chunk.as_bytes());
            if last {
                return self;
            }
            rest = tail;
        }
    }

    /// Writes a 32-bit int in its shortest form.
    pub fn int(&mut self, v: i32) -> &mut Self {
        match v {
            -16..=47 => self.out.put_u8((0x90 + v) as u8),
            -2048..=2047 => {
                self.out.put_u8((0xc8 + (v >> 8)) as u8);
                self.out.put_u8(v as u8);
            }
            _ => {
                self.out.put_u8(b'I');
                self.out.put_i32(v);
            }
        }
        self
    }

    /// Writes an untyped map of strings.
    pub fn string_map(&mut self, entries: &[(&str, &str)]) -> &mut Self {
        self.out.put_u8(b'H');
        for (k, v) in entries {
            self.string(k).string(v);
        }
        self.out.put_u8(b'Z');
        self
    }

    /// The bytes written.
    pub fn finish(self) -> BytesMut {
        self.out
    }
}

fn frame(flag: u8, status: u8, id: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + body.len());
    out.put_slice(&MAGIC);
    out.put_u8(flag);
    out.put_u8(status);
    out.put_u64(id);
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.freeze()
}

/// A `sayHello`-style call: `method(String arg)` on `service` with string attachments.
pub fn request_frame(
    id: u64,
    two_way: bool,
    service: &str,
    method: &str,
    arg: &str,
    attachments: &[(&str, &str)],
) -> Bytes {
    let mut body = HessianWriter::new();
    body.string("2.0.2")
        .string(service)
        .string(super::DEMO_VERSION)
        .string(method)
        .string("Ljava/lang/String;")
        .string(arg);
    let mut all = vec![
        ("path", service),
        ("interface", service),
        ("version", super::DEMO_VERSION),
    ];
    all.extend_from_slice(attachments);
    body.string_map(&all);
    let flag = FLAG_REQUEST | HESSIAN2 | if two_way { FLAG_TWO_WAY } else { 0 };
    frame(flag, 0, id, &body.finish())
}

/// A successful response carrying `value` and `attachments`.
pub fn response_frame(id: u64, value: &str, attachments: &[(&str, &str)]) -> Bytes {
    let mut body = HessianWriter::new();
    body.int(RESPONSE_VALUE_WITH_ATTACHMENTS)
        .string(value)
        .string_map(attachments);
    frame(HESSIAN2, STATUS_OK, id, &body.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_use_the_short_forms_and_chunk() {
        let mut w = HessianWriter::new();
        w.string("w1");
        assert_eq!(&w.finish()[..], b"\x02w1");
        let mut w = HessianWriter::new();
        w.string(&"x".repeat(40));
        assert_eq!(&w.finish()[..2], &[0x30, 40]);
        let long = "y".repeat(MAX_CHUNK + 5);
        let mut w = HessianWriter::new();
        w.string(&long);
        let out = w.finish();
        assert_eq!(out[0], b'R');
        assert_eq!(&out[3 + MAX_CHUNK..3 + MAX_CHUNK + 1], &[0x05]);
    }
}
