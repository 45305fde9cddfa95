//! The clients' output: one flat JSON object a line (string, number, boolean and null values).

use serde_json::{Map, Value};

/// One JSON line a client printed.
#[derive(Debug)]
pub struct Line(Map<String, Value>);

impl Line {
    /// Parses one line of the scripts' output. Nested values are refused: the scripts print
    /// flat objects only, so one means their output format changed under the tests.
    pub fn parse(text: &str) -> Result<Self, String> {
        let object: Map<String, Value> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match object
            .iter()
            .find(|(_, value)| value.is_object() || value.is_array())
        {
            Some((key, _)) => Err(format!("{key}: nested values are not part of the format")),
            None => Ok(Self(object)),
        }
    }

    /// The string at `key`, if it is one.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    /// The number at `key`, if it is one.
    pub fn num(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(Value::as_f64)
    }

    /// The boolean at `key`, if it is one.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(Value::as_bool)
    }
}

#[cfg(test)]
mod tests {
    use super::Line;
    use serde_json::Value;

    #[test]
    fn flat_lines_parse_and_nesting_is_refused() -> Result<(), String> {
        let line = Line::parse(
            r#"{"client": "dubbopy", "call": 0, "ok": false, "status": null, "message": "a \"q\" \u00e9\n", "ms": 12}"#,
        )?;
        assert_eq!(line.str("client"), Some("dubbopy"));
        assert_eq!(line.num("call"), Some(0.0));
        assert_eq!(line.bool("ok"), Some(false));
        assert_eq!(line.0.get("status"), Some(&Value::Null));
        assert_eq!(line.str("message"), Some("a \"q\" \u{e9}\n"));
        assert!(Line::parse(r#"{"nested": {"a": 1}}"#).is_err());
        assert!(Line::parse(r#"{"a": "unterminated}"#).is_err());
        Ok(())
    }
}
