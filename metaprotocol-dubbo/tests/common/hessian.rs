//! A small Hessian2 writer for tests: every encoding form of every value type, so that the
//! codec's skipper can be checked against values it did not write itself.

/// A Hessian2 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    /// Milliseconds since the epoch.
    Date(i64),
    /// Minutes since the epoch (the compact date form).
    DateMinutes(i32),
    Str(String),
    /// A string written as `R` chunks, one per piece, the last piece as the final chunk.
    ChunkedStr(Vec<String>),
    Binary(Vec<u8>),
    /// A binary written as `A` chunks, the last piece as the final chunk.
    ChunkedBinary(Vec<Vec<u8>>),
    List {
        type_name: Option<String>,
        fixed: bool,
        items: Vec<Value>,
    },
    Map {
        type_name: Option<String>,
        entries: Vec<(Value, Value)>,
    },
    /// An object of class `class`; objects of one class must have the same number of fields.
    Object {
        class: String,
        fields: Vec<Value>,
    },
    /// A back reference to the n-th list, map or object.
    Ref(u32),
}

/// Writes values into one body, keeping its class and type tables.
#[derive(Debug, Default)]
pub struct Writer {
    pub out: Vec<u8>,
    classes: Vec<String>,
    types: Vec<String>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn value(&mut self, value: &Value) -> &mut Self {
        match value {
            Value::Null => self.out.push(b'N'),
            Value::Bool(true) => self.out.push(b'T'),
            Value::Bool(false) => self.out.push(b'F'),
            Value::Int(v) => self.int(*v),
            Value::Long(v) => self.long(*v),
            Value::Double(v) => self.double(*v),
            Value::Date(ms) => {
                self.out.push(0x4a);
                self.out.extend_from_slice(&ms.to_be_bytes());
            }
            Value::DateMinutes(minutes) => {
                self.out.push(0x4b);
                self.out.extend_from_slice(&minutes.to_be_bytes());
            }
            Value::Str(s) => {
                self.string(s);
            }
            Value::ChunkedStr(pieces) => {
                for (i, piece) in pieces.iter().enumerate() {
                    let units = piece.encode_utf16().count() as u16;
                    let tag = if i + 1 == pieces.len() { b'S' } else { b'R' };
                    self.out.push(tag);
                    self.out.extend_from_slice(&units.to_be_bytes());
                    self.text(piece);
                }
            }
            Value::Binary(bytes) => self.binary(bytes),
            Value::ChunkedBinary(pieces) => {
                for (i, piece) in pieces.iter().enumerate() {
                    let tag = if i + 1 == pieces.len() { b'B' } else { b'A' };
                    self.out.push(tag);
                    self.out
                        .extend_from_slice(&(piece.len() as u16).to_be_bytes());
                    self.out.extend_from_slice(piece);
                }
            }
            Value::List {
                type_name,
                fixed,
                items,
            } => self.list(type_name.as_deref(), *fixed, items),
            Value::Map { type_name, entries } => {
                match type_name {
                    Some(name) => {
                        self.out.push(b'M');
                        self.type_name(name);
                    }
                    None => self.out.push(b'H'),
                }
                for (key, value) in entries {
                    self.value(key).value(value);
                }
                self.out.push(b'Z');
            }
            Value::Object { class, fields } => self.object(class, fields),
            Value::Ref(n) => {
                self.out.push(0x51);
                self.int(*n as i32);
            }
        }
        self
    }

    /// A string in the form Java picks for its length (chunks of 0x8000 units).
    pub fn string(&mut self, s: &str) -> &mut Self {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut chunks = units.chunks(0x8000).peekable();
        if chunks.peek().is_none() {
            self.out.push(0);
        }
        while let Some(chunk) = chunks.next() {
            let len = chunk.len();
            let last = chunks.peek().is_none();
            match (last, len) {
                (true, 0..=31) => self.out.push(len as u8),
                (true, 32..=1023) => self
                    .out
                    .extend_from_slice(&[0x30 + (len >> 8) as u8, len as u8]),
                (true, _) => {
                    self.out.push(b'S');
                    self.out.extend_from_slice(&(len as u16).to_be_bytes());
                }
                (false, _) => {
                    self.out.push(b'R');
                    self.out.extend_from_slice(&(len as u16).to_be_bytes());
                }
            }
            self.text(&String::from_utf16_lossy(chunk));
        }
        self
    }

    /// Raw bytes, for hand-made malformed input.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    /// Text data as Java writes it: characters outside the BMP as two 3-byte surrogates.
    fn text(&mut self, s: &str) {
        let mut buf = [0u16; 2];
        for c in s.chars() {
            if c.len_utf16() == 1 {
                let mut utf8 = [0u8; 4];
                self.out
                    .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            } else {
                for unit in c.encode_utf16(&mut buf).iter() {
                    let u = u32::from(*unit);
                    self.out.extend_from_slice(&[
                        0xe0 | (u >> 12) as u8,
                        0x80 | ((u >> 6) & 0x3f) as u8,
                        0x80 | (u & 0x3f) as u8,
                    ]);
                }
            }
        }
    }

    fn int(&mut self, v: i32) {
        match v {
            -16..=47 => self.out.push((0x90 + v) as u8),
            -2048..=2047 => self
                .out
                .extend_from_slice(&[(0xc8 + (v >> 8)) as u8, v as u8]),
            -262_144..=262_143 => {
                self.out
                    .extend_from_slice(&[(0xd4 + (v >> 16)) as u8, (v >> 8) as u8, v as u8]);
            }
            _ => {
                self.out.push(b'I');
                self.out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn long(&mut self, v: i64) {
        match v {
            -8..=15 => self.out.push((0xe0 + v) as u8),
            -2048..=2047 => self
                .out
                .extend_from_slice(&[(0xf8 + (v >> 8)) as u8, v as u8]),
            -262_144..=262_143 => {
                self.out
                    .extend_from_slice(&[(0x3c + (v >> 16)) as u8, (v >> 8) as u8, v as u8]);
            }
            _ if i32::try_from(v).is_ok() => {
                self.out.push(0x59);
                self.out.extend_from_slice(&(v as i32).to_be_bytes());
            }
            _ => {
                self.out.push(b'L');
                self.out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    fn double(&mut self, v: f64) {
        if v == 0.0 {
            self.out.push(0x5b);
        } else if v == 1.0 {
            self.out.push(0x5c);
        } else if v.fract() == 0.0 && (-128.0..=127.0).contains(&v) {
            self.out.extend_from_slice(&[0x5d, v as i8 as u8]);
        } else if v.fract() == 0.0 && (-32768.0..=32767.0).contains(&v) {
            self.out.push(0x5e);
            self.out.extend_from_slice(&(v as i16).to_be_bytes());
        } else if f64::from(v as f32) == v {
            self.out.push(0x5f);
            self.out.extend_from_slice(&(v as f32).to_be_bytes());
        } else {
            self.out.push(b'D');
            self.out.extend_from_slice(&v.to_be_bytes());
        }
    }

    fn binary(&mut self, bytes: &[u8]) {
        match bytes.len() {
            0..=15 => self.out.push(0x20 + bytes.len() as u8),
            16..=1023 => self
                .out
                .extend_from_slice(&[0x34 + (bytes.len() >> 8) as u8, bytes.len() as u8]),
            len => {
                self.out.push(b'B');
                self.out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        self.out.extend_from_slice(bytes);
    }

    fn list(&mut self, type_name: Option<&str>, fixed: bool, items: &[Value]) {
        let len = items.len();
        match (type_name, fixed) {
            (Some(name), true) if len <= 7 => {
                self.out.push(0x70 + len as u8);
                self.type_name(name);
            }
            (Some(name), true) => {
                self.out.push(b'V');
                self.type_name(name);
                self.int(len as i32);
            }
            (Some(name), false) => {
                self.out.push(0x55);
                self.type_name(name);
            }
            (None, true) if len <= 7 => self.out.push(0x78 + len as u8),
            (None, true) => {
                self.out.push(0x58);
                self.int(len as i32);
            }
            (None, false) => self.out.push(0x57),
        }
        for item in items {
            self.value(item);
        }
        if !fixed {
            self.out.push(b'Z');
        }
    }

    /// A type: its name the first time, a reference to it afterwards.
    fn type_name(&mut self, name: &str) {
        match self.types.iter().position(|t| t == name) {
            Some(index) => self.int(index as i32),
            None => {
                self.types.push(name.to_owned());
                self.string(name);
            }
        }
    }

    /// An object, preceded by its class definition the first time the class appears.
    fn object(&mut self, class: &str, fields: &[Value]) {
        let index = match self.classes.iter().position(|c| c == class) {
            Some(index) => index,
            None => {
                self.out.push(b'C');
                self.string(class);
                self.int(fields.len() as i32);
                for i in 0..fields.len() {
                    self.string(&format!("f{i}"));
                }
                self.classes.push(class.to_owned());
                self.classes.len() - 1
            }
        };
        if index < 16 {
            self.out.push(0x60 + index as u8);
        } else {
            self.out.push(b'O');
            self.int(index as i32);
        }
        for field in fields {
            self.value(field);
        }
    }
}

/// A Hessian2 request body: the five call fields, `args`, then `attachments` (string pairs) if
/// given.
pub fn request_body(
    service: &str,
    method: &str,
    descriptor: &str,
    args: &[Value],
    attachments: Option<&[(&str, &str)]>,
) -> Vec<u8> {
    let mut writer = Writer::new();
    writer
        .string("2.0.2")
        .string(service)
        .string("1.0.0")
        .string(method)
        .string(descriptor);
    for arg in args {
        writer.value(arg);
    }
    if let Some(attachments) = attachments {
        writer.out.push(b'H');
        for (key, value) in attachments {
            writer.string(key).string(value);
        }
        writer.out.push(b'Z');
    }
    writer.out
}
