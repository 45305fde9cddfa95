//! [`Skim`]: a line too long to decode, read as it streams past and dropped: where it ends,
//! and, for an answer, the request its `id` names, wherever in the object the id comes.

/// What a string being read is.
#[derive(Debug, Default, Clone, Copy)]
enum Reading {
    /// A string the skim does not look into.
    #[default]
    Other,
    /// A member name of the answer object: how many bytes of `id` it matched so far, or
    /// `None` once it is not `id`.
    Name(Option<u8>),
    /// The answer's id: the digits of the proxy's `"<n>:<hex>"` before the colon.
    Id {
        /// `n` so far (`None` once the id is not the proxy's), and whether it has a digit.
        n: Option<(u64, bool)>,
        /// The colon was read: the rest is the client's id in hex, which the skim does not need.
        colon: bool,
    },
}

/// Where a line of JSON being passed over stands, byte by byte: the depth of the objects and
/// arrays open, whether a string is open and what it is, and the answer's id once read. The
/// answer object's own members are at depth 1; a string in a value never holds a raw `"` or
/// newline, so bytes that look like an `id` member in a string or a nested object are never
/// taken for it.
#[derive(Debug, Default)]
pub(crate) struct Skim {
    depth: u32,
    in_string: bool,
    escaped: bool,
    reading: Reading,
    /// At depth 1, outside strings: the next string is a member name.
    name_next: bool,
    /// The member name just read was `id`.
    named_id: bool,
    /// After `"id":`: the next value is the id.
    id_next: bool,
    /// The request the id names, once read.
    request_id: Option<u64>,
}

impl Skim {
    /// Reads `bytes`, the next part of the line: how many of them end it (through its
    /// newline), or `None` if they all belong to it.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (at, &byte) in bytes.iter().enumerate() {
            if byte == b'\n' {
                return Some(at + 1);
            }
            if self.in_string {
                self.string_byte(byte);
            } else {
                self.structure_byte(byte);
            }
        }
        None
    }

    /// The request the answer's id named, if it was the proxy's.
    pub(crate) fn request_id(&self) -> Option<u64> {
        self.request_id
    }

    fn structure_byte(&mut self, byte: u8) {
        match byte {
            b'"' => {
                self.in_string = true;
                self.reading = if self.depth == 1 && self.name_next {
                    Reading::Name(Some(0))
                } else if self.depth == 1 && self.id_next {
                    Reading::Id {
                        n: Some((0, false)),
                        colon: false,
                    }
                } else {
                    Reading::Other
                };
                self.name_next = false;
                self.id_next = false;
            }
            b'{' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                self.name_next = byte == b'{' && self.depth == 1;
                self.id_next = false;
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.name_next = true,
            b':' if self.depth == 1 => self.id_next = std::mem::take(&mut self.named_id),
            b' ' | b'\t' | b'\r' => {}
            // A number or literal: an id that is not the proxy's string.
            _ => self.id_next = false,
        }
    }

    fn string_byte(&mut self, byte: u8) {
        let escape = std::mem::take(&mut self.escaped);
        if !escape && byte == b'"' {
            self.in_string = false;
            match self.reading {
                Reading::Name(matched) => self.named_id = matched == Some(2),
                Reading::Id {
                    n: Some((n, true)),
                    colon: true,
                } => self.request_id = Some(n),
                _ => {}
            }
            return;
        }
        if !escape && byte == b'\\' {
            self.escaped = true;
        }
        // Escapes are not the proxy's: an escaped name or id is not one the skim takes.
        let plain = !escape && byte != b'\\';
        match &mut self.reading {
            Reading::Other => {}
            Reading::Name(matched) => {
                *matched = matched
                    .filter(|&m| plain && b"id".get(usize::from(m)) == Some(&byte))
                    .map(|m| m + 1);
            }
            Reading::Id { colon, .. } if !*colon && plain && byte == b':' => *colon = true,
            Reading::Id { n, colon: false } => {
                *n = n
                    .filter(|_| plain && byte.is_ascii_digit())
                    .and_then(|(n, _)| n.checked_mul(10))
                    .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                    .map(|n| (n, true));
            }
            Reading::Id { colon: true, .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skims `line` cut at every place: the request it names and where it ends, the same
    /// wherever the reads break it.
    fn skim(line: &[u8]) -> (Option<u64>, Option<usize>) {
        let mut whole = Skim::default();
        let end = whole.feed(line);
        let expected = (whole.request_id(), end);
        for cut in 0..line.len() {
            let mut skim = Skim::default();
            let end = skim
                .feed(&line[..cut])
                .or_else(|| skim.feed(&line[cut..]).map(|at| cut + at));
            assert_eq!((skim.request_id(), end), expected, "cut at {cut}");
        }
        expected
    }

    #[test]
    fn the_answers_id_is_found_wherever_it_comes() {
        let last = br#"{"jsonrpc": "2.0", "result": {"id": "5:31", "list": ["\"id\":\"6:31\"", {"id": 1}]}, "id": "42:3132"}"#;
        let mut line = last.to_vec();
        line.extend_from_slice(b"\nnext");
        assert_eq!(skim(&line), (Some(42), Some(last.len() + 1)));
        let first =
            b"{\"id\":\"7:22\",\"error\":{\"code\":1,\"message\":\"x\"},\"jsonrpc\":\"2.0\"}\r\n";
        assert_eq!(skim(first), (Some(7), Some(first.len())));
    }

    #[test]
    fn an_id_that_is_not_the_proxys_names_no_request() {
        for line in [
            &br#"{"result":1,"id":7}"#[..],
            br#"{"result":1,"id":":31"}"#,
            br#"{"result":1,"id":"7"}"#,
            br#"{"result":1,"id":"7x:31"}"#,
            br#"{"result":1,"\u0069d":"7:31"}"#,
            br#"{"result":1,"idx":"7:31"}"#,
            br#"{"result":1,"id":"99999999999999999999999:31"}"#,
            br#"[{"id":"7:31"}]"#,
        ] {
            let mut line = line.to_vec();
            line.push(b'\n');
            assert_eq!(skim(&line).0, None, "{}", String::from_utf8_lossy(&line));
        }
    }
}
