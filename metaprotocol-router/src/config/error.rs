//! Config errors that name the field and the reason.

use std::fmt;

/// An invalid configuration: where (a field path such as `listeners[0].route_config`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The path of the offending field, `""` for the document itself.
    pub field: String,
    /// Why the value was rejected.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix` prepended to its field path.
    pub fn within(self, prefix: &str) -> Self {
        let field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{prefix}{}", self.field),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        Self { field, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Deserializes `value` as `T`, naming the failing field on error.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ConfigError::new(field, err.into_inner().to_string())
    })
}

/// Parses a YAML (or JSON) document into a generic value.
pub(crate) fn parse_document(text: &str) -> Result<serde_json::Value, ConfigError> {
    let value: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|err| ConfigError::new("", format!("not valid YAML: {err}")))?;
    Ok(match value {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        other => other,
    })
}
