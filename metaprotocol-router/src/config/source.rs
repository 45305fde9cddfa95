//! Reading config documents: typed parsing in which strings are strings, and the line and column
//! of any field path.
//!
//! YAML reads a plain `1.10` as the number 1.1 and `yes` as true; a config that meant the string
//! would then match the wrong requests. Whether a scalar was quoted is known only while the YAML
//! is parsed, so the document is deserialized straight into the config types by serde-saphyr with
//! `no_schema` on: a plain scalar that YAML would read as a number, boolean or null, deserialized
//! where a string is expected, is an error ("quote it"). JSON is YAML too, so `"exact": 1.1` is
//! rejected the same way. Fields whose type is loose (`serde_json::Value`: codec and filter
//! options) keep YAML's usual reading; their consumers check them.
//!
//! Positions of semantic errors, found after parsing, are recovered from the field path by
//! walking the document's parse events ([`position_of`]); that second pass only runs for an
//! error.

use serde::de::DeserializeOwned;
use serde_saphyr::granit_parser::{Event, Parser};
use serde_saphyr::{ExternalMessageSource, MessageFormatter};

use super::{ConfigError, Position};

/// Parses a YAML (or JSON) document into `T`; errors name the field, the reason, and the line
/// and column.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.no_schema = true;
    options.with_snippet = false;
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            field = field_path(err.path());
            err.into_inner()
        })
    })
    .map_err(|err| {
        let position = err
            .location()
            .and_then(|at| position(at.line(), at.column()))
            .or_else(|| position_of(text, &field));
        let mut error = ConfigError::new(field, reason(&err));
        error.position = position;
        error
    })
}

/// Reads a loosely typed part of a config (a filter's `config`, absent meaning `{}`) into `T`;
/// errors name the field path inside it (`token_bucket.max_tokens`).
pub(crate) fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ConfigError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let value = if value.is_null() { &empty } else { value };
    serde_path_to_error::deserialize(value)
        .map_err(|err| ConfigError::new(field_path(err.path()), err.into_inner().to_string()))
}

/// The path in the form config errors use (`listeners[0].route_config`), up to the first step
/// the deserializer could not name (a map key that failed to parse, say).
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    field
}

/// The reason of a parse error, in the config's terms.
fn reason(err: &serde_saphyr::Error) -> String {
    match err {
        serde_saphyr::Error::QuotingRequired { value, .. } if !value.is_empty() => format!(
            "expected a string, found {value}, which YAML reads as a number or boolean; \
             quote it: \"{value}\""
        ),
        serde_saphyr::Error::QuotingRequired { .. } => {
            "expected a string, found a number or boolean; quote it".to_owned()
        }
        serde_saphyr::Error::NullIntoString { .. } => "expected a string, found nothing".to_owned(),
        serde_saphyr::Error::ExternalMessage { source, .. }
            if matches!(**source, ExternalMessageSource::Parser(_)) =>
        {
            format!(
                "not valid YAML: {}",
                serde_saphyr::DefaultMessageFormatter.format_message(err)
            )
        }
        _ => serde_saphyr::DefaultMessageFormatter
            .format_message(err)
            .into_owned(),
    }
}

/// A 1-based position, `None` for the parser's "unknown" (line 0).
fn position(line: impl TryInto<usize>, column: impl TryInto<usize>) -> Option<Position> {
    let line = line.try_into().ok().filter(|l| *l > 0)?;
    let column = column.try_into().ok()?;
    Some(Position { line, column })
}

/// An open collection while walking a document: its field path (`None` inside a complex mapping
/// key, which no field path names) and where its next child goes.
struct Open {
    path: Option<String>,
    next: Next,
}

enum Next {
    /// A mapping awaiting a key.
    Key,
    /// A mapping awaiting the value of this key (`None`: a key that is not a plain string).
    Value(Option<String>),
    /// A sequence, at this index.
    Item(usize),
}

/// Where `field` (a path as config errors name it) is in `text`: the start of its value, or of
/// the nearest enclosing node written in the document when the field itself is not. `None` for
/// the document itself (`""`) and for a document that does not parse.
pub(crate) fn position_of(text: &str, field: &str) -> Option<Position> {
    if field.is_empty() {
        return None;
    }
    let mut open: Vec<Open> = Vec::new();
    let mut nearest = None;
    for event in Parser::new_from_str(text) {
        // A syntax error ends the walk; what was found before it still places the field.
        let Ok((event, span)) = event else { break };
        let opens = match &event {
            Event::MappingStart(..) => Some(Next::Key),
            Event::SequenceStart(..) => Some(Next::Item(0)),
            Event::Scalar(..) | Event::Alias(..) => None,
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                continue;
            }
            Event::DocumentEnd => break,
            _ => continue,
        };
        let path = match open.last_mut() {
            None => Some(String::new()),
            Some(parent) => match &mut parent.next {
                Next::Key => {
                    let key = match &event {
                        Event::Scalar(key, ..) => Some(key.to_string()),
                        _ => None,
                    };
                    parent.next = Next::Value(key);
                    if let Some(next) = opens {
                        open.push(Open { path: None, next });
                    }
                    continue;
                }
                Next::Value(key) => {
                    let path = match (&parent.path, key.take()) {
                        (Some(parent), Some(key)) if parent.is_empty() => Some(key),
                        (Some(parent), Some(key)) => Some(format!("{parent}.{key}")),
                        _ => None,
                    };
                    parent.next = Next::Key;
                    path
                }
                Next::Item(index) => {
                    let path = parent.path.as_ref().map(|p| format!("{p}[{index}]"));
                    *index += 1;
                    path
                }
            },
        };
        if let Some(path) = &path {
            let at = position(span.start.line(), span.start.col() + 1);
            if path == field {
                return at;
            }
            if field
                .strip_prefix(path.as_str())
                .is_some_and(|rest| path.is_empty() || rest.starts_with(['.', '[']))
            {
                nearest = at;
            }
        }
        if let Some(next) = opens {
            open.push(Open { path, next });
        }
    }
    nearest
}
