//! The clients' output: one flat JSON object a line (string, number, boolean and null values).
//!
//! A few dozen lines of parsing keep the examples package free of a JSON dependency.

use std::collections::BTreeMap;

/// A scalar JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// One JSON line a client printed.
#[derive(Debug)]
pub struct Line(BTreeMap<String, Json>);

impl Line {
    /// Parses one line of the scripts' output.
    pub fn parse(text: &str) -> Result<Self, String> {
        FlatJson {
            chars: text.trim().chars().peekable(),
        }
        .object()
        .map(Self)
    }

    /// The string at `key`, if it is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(Json::Str(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The number at `key`, if it is one.
    pub fn num(&self, key: &str) -> Option<f64> {
        match self.0.get(key) {
            Some(Json::Num(n)) => Some(*n),
            _ => None,
        }
    }

    /// The boolean at `key`, if it is one.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key) {
            Some(Json::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

/// A parser for the one shape the client scripts print: `{"key": scalar, ...}`.
struct FlatJson<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl FlatJson<'_> {
    fn object(&mut self) -> Result<BTreeMap<String, Json>, String> {
        let mut out = BTreeMap::new();
        self.expect('{')?;
        if self.eat('}') {
            return Ok(out);
        }
        loop {
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            out.insert(key, value);
            if !self.eat(',') {
                self.expect('}')?;
                return Ok(out);
            }
        }
    }

    fn skip_ws(&mut self) {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    fn eat(&mut self, want: char) -> bool {
        self.skip_ws();
        self.chars.next_if_eq(&want).is_some()
    }

    fn expect(&mut self, want: char) -> Result<(), String> {
        if self.eat(want) {
            Ok(())
        } else {
            Err(format!("expected {want:?}"))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        for want in word.chars() {
            if self.chars.next() != Some(want) {
                return Err(format!("expected {word}"));
            }
        }
        Ok(value)
    }

    fn value(&mut self) -> Result<Json, String> {
        self.skip_ws();
        match self.chars.peek() {
            Some('"') => self.string().map(Json::Str),
            Some('t') => self.literal("true", Json::Bool(true)),
            Some('f') => self.literal("false", Json::Bool(false)),
            Some('n') => self.literal("null", Json::Null),
            Some(c) if *c == '-' || c.is_ascii_digit() => {
                let mut number = String::new();
                while let Some(c) = self
                    .chars
                    .next_if(|c| c.is_ascii_digit() || "+-.eE".contains(*c))
                {
                    number.push(c);
                }
                number
                    .parse()
                    .map(Json::Num)
                    .map_err(|e| format!("number {number}: {e}"))
            }
            other => Err(format!(
                "unexpected {other:?} (nested values are not part of the format)"
            )),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.expect('"')?;
        let mut out = String::new();
        loop {
            match self.chars.next().ok_or("unterminated string")? {
                '"' => return Ok(out),
                '\\' => match self.chars.next().ok_or("unterminated escape")? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'u' => out.push(self.unicode_escape()?),
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits: String = (0..4).filter_map(|_| self.chars.next()).collect();
        u32::from_str_radix(&digits, 16).map_err(|e| format!("\\u{digits}: {e}"))
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            if self.chars.next() != Some('\\') || self.chars.next() != Some('u') {
                return Err("lone surrogate".into());
            }
            let low = self.hex4()?;
            0x10000 + ((first - 0xd800) << 10) + low.saturating_sub(0xdc00)
        } else {
            first
        };
        Ok(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

#[cfg(test)]
mod tests {
    use super::{Json, Line};

    #[test]
    fn flat_lines_parse_and_nesting_is_refused() -> Result<(), String> {
        let line = Line::parse(
            r#"{"client": "dubbopy", "call": 0, "ok": false, "status": null, "message": "a \"q\" \u00e9\n", "ms": 12}"#,
        )?;
        assert_eq!(line.str("client"), Some("dubbopy"));
        assert_eq!(line.num("call"), Some(0.0));
        assert_eq!(line.bool("ok"), Some(false));
        assert_eq!(line.0.get("status"), Some(&Json::Null));
        assert_eq!(line.str("message"), Some("a \"q\" \u{e9}\n"));
        assert!(Line::parse(r#"{"nested": {"a": 1}}"#).is_err());
        assert!(Line::parse(r#"{"a": "unterminated}"#).is_err());
        Ok(())
    }
}
