//! Reading config documents: typed parsing in which strings are strings, numbers are numbers,
//! and the line and column of any field path.
//!
//! YAML reads a plain `1.10` as the number 1.1 and `yes` as true; a config that meant the string
//! would then match the wrong requests. Whether a scalar was quoted is known only while the YAML
//! is parsed, so the document is deserialized straight into the config types by serde-saphyr with
//! `no_schema` on: a plain scalar that YAML would read as a number, boolean or null, deserialized
//! where a string is expected, is an error ("quote it"). JSON is YAML too, so `"exact": 1.1` is
//! rejected the same way. Fields whose type is loose (`serde_json::Value`: codec and filter
//! options) keep YAML's usual reading; their consumers check them.
//!
//! The other way round, serde-saphyr reads a quoted `"8080"` as a number where a number is
//! wanted. A quoted scalar is a string, so a document holding quoted scalars that read as numbers
//! or booleans is parsed a second time with each of them made unreadable as one
//! ([`refuse_quoted_literals`]): where a string is wanted it still parses, where a number or
//! boolean is wanted it fails, and the failure's field path names the scalar.
//!
//! Positions of semantic errors, found after parsing, are recovered from the field path by
//! walking the document's parse events ([`position_of`]); that second pass only runs for an
//! error.

use std::marker::PhantomData;
use std::ops::ControlFlow;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, Span};
use serde_saphyr::{ExternalMessageSource, MessageFormatter};

use super::{ConfigError, Position};

/// Parses a YAML (or JSON) document into `T`; errors name the field, the reason, and the line
/// and column.
pub(crate) fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    parse_seed(text, Whole(PhantomData))
}

/// [`parse`] of what `seed` reads from the document.
fn parse_seed<S: Seed>(text: &str, seed: S) -> Result<S::Value, ConfigError> {
    let parsed = parse_typed(text, seed)?;
    refuse_quoted_literals(text, seed)?;
    Ok(parsed)
}

/// What to read from a document: all of it ([`Whole`]) or one entry of a list ([`EntryOf`]).
trait Seed: Copy {
    type Value;
    fn deserialize<'de, D: serde::Deserializer<'de>>(
        self,
        from: D,
    ) -> Result<Self::Value, D::Error>;
}

/// The whole document, as a `T`.
struct Whole<T>(PhantomData<fn() -> T>);

impl<T> Clone for Whole<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Whole<T> {}

impl<T: DeserializeOwned> Seed for Whole<T> {
    type Value = T;
    fn deserialize<'de, D: serde::Deserializer<'de>>(self, from: D) -> Result<T, D::Error> {
        T::deserialize(from)
    }
}

/// True if `text` holds no YAML node, only blank lines and comments: what a file being
/// rewritten holds between its truncation and its new contents.
pub(crate) fn is_blank(text: &str) -> bool {
    !Parser::new_from_str(text).any(|event| match event {
        Ok((event, _)) => matches!(
            event,
            Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(..)
        ),
        Err(_) => true,
    })
}

/// Parses `text` into `T` as serde-saphyr reads it, strings held to be written as strings.
fn parse_typed<S: Seed>(text: &str, seed: S) -> Result<S::Value, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.no_schema = true;
    // A tag YAML does not define (`!include`, `!env`) would be dropped, its value read as
    // plain text: the config is strict, so it is an error.
    options.reject_unsupported_tags = true;
    options.with_snippet = false;
    options.budget = Some(budget_for(text));
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |deserializer| {
        let mut track = serde_path_to_error::Track::new();
        seed.deserialize(serde_path_to_error::Deserializer::new(
            deserializer,
            &mut track,
        ))
        .inspect_err(|_| field = field_path(&track.path()))
    })
    .map_err(|err| {
        let position = err
            .location()
            .and_then(|at| position(at.line(), at.column()))
            .or_else(|| position_of(text, &field));
        // An error met before its field's key was passed on (a tag on the value, say) names
        // the enclosing entry; the value written where it points is the field.
        let field = position
            .and_then(|at| field_starting_at(text, &field, at))
            .unwrap_or(field);
        let mut error = ConfigError::new(field, reason(&err));
        error.position = position;
        error
    })
}

/// What the parser may build from `text`: its defaults, with the counts of nodes and events
/// grown to what the text can hold. The default 250,000 nodes refused a route config of about
/// 18,000 routes; written out, each node takes at least a byte of text and at most two events, so these
/// bounds refuse no config written out, and still bound what aliases can make the parser build
/// to a multiple of the text.
fn budget_for(text: &str) -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(text.len().saturating_mul(2));
    budget
}

/// The path of the node within `field` whose value starts at `at`, if there is one.
fn field_starting_at(text: &str, field: &str, at: Position) -> Option<String> {
    let mut found = None;
    walk_fields(text, |path, _, span| {
        let inside = path.len() > field.len()
            && path.starts_with(field)
            && (field.is_empty() || path[field.len()..].starts_with(['.', '[']));
        if inside && position(span.start.line(), span.start.col() + 1) == Some(at) {
            found = Some(path.to_owned());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// A character no number or boolean contains, put at the start of quoted literals so that only
/// a field that wants a string can still read them.
const NOT_A_LITERAL: char = '\u{E000}';

/// Refuses a quoted scalar that reads as a number or boolean in a field that wants a number or
/// boolean (`port: "8080"`): the config is strict, and a string is not coerced.
fn refuse_quoted_literals<S: Seed>(text: &str, seed: S) -> Result<(), ConfigError> {
    let literals = quoted_literals(text);
    if literals.is_empty() {
        return Ok(());
    }
    let mut marked = String::with_capacity(text.len() + literals.len() * NOT_A_LITERAL.len_utf8());
    let mut copied = 0;
    for content in literals.iter().filter_map(|literal| literal.content) {
        marked.push_str(&text[copied..content]);
        marked.push(NOT_A_LITERAL);
        copied = content;
    }
    marked.push_str(&text[copied..]);
    let Err(err) = parse_typed(&marked, seed) else {
        return Ok(());
    };
    // A failure elsewhere is not about quoting (a field whose string is checked, which the
    // mark fails, say): the first parse found nothing wrong there. Nor is one whose reason
    // quotes the marked text: that field read it as a string, and checked it (a duration of
    // "0").
    match literals
        .into_iter()
        .find(|literal| literal.path == err.field)
    {
        None => Ok(()),
        Some(_) if quotes_the_mark(&err.reason) => Ok(()),
        Some(literal) => {
            let mut error = ConfigError::new(
                literal.path,
                format!(
                    "expected a number or boolean, found the string \"{0}\"; write it without \
                     quotes: {0}",
                    literal.value
                ),
            );
            error.position = position(literal.start.line(), literal.start.col() + 1);
            Err(error)
        }
    }
}

/// True if `reason` quotes a string that starts with [`NOT_A_LITERAL`], as it is or escaped
/// (serde's "invalid value: string ..." shows it escaped).
fn quotes_the_mark(reason: &str) -> bool {
    reason.contains(NOT_A_LITERAL) || reason.contains(&NOT_A_LITERAL.escape_debug().to_string())
}

/// A quoted scalar that YAML would read as a number or boolean were it plain, or an alias of
/// one.
struct QuotedLiteral {
    /// Its field path.
    path: String,
    /// Its text.
    value: String,
    /// Where it starts (its opening quote, or the alias).
    start: Marker,
    /// The byte offset of its first character, past the opening quote; `None` for an alias,
    /// whose text is its anchor's.
    content: Option<usize>,
}

/// The quoted literals in value position (not mapping keys) in `text`, and the aliases of
/// anchored ones (`port: *n` after `&n "8080"`: the alias reads as the quoted scalar), in
/// document order.
fn quoted_literals(text: &str) -> Vec<QuotedLiteral> {
    let mut found = Vec::new();
    // The text of each anchored quoted literal, by anchor id.
    let mut anchored: Vec<(usize, String)> = Vec::new();
    walk_fields(text, |path, event, span| {
        match event {
            Event::Scalar(
                value,
                ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted,
                anchor,
                None,
            ) if reads_as_literal(value) => {
                if let Some(content) = opening_quote(text, span).map(|quote| quote + 1) {
                    found.push(QuotedLiteral {
                        path: path.to_owned(),
                        value: value.to_string(),
                        start: span.start,
                        content: Some(content),
                    });
                }
                if *anchor != 0 {
                    anchored.push((*anchor, value.to_string()));
                }
            }
            Event::Alias(anchor) => {
                if let Some((_, value)) = anchored.iter().rev().find(|(id, _)| id == anchor) {
                    found.push(QuotedLiteral {
                        path: path.to_owned(),
                        value: value.clone(),
                        start: span.start,
                        content: None,
                    });
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    found
}

/// The byte offset of the opening quote of the quoted scalar at `span`.
fn opening_quote(text: &str, span: &Span) -> Option<usize> {
    let start = span
        .start
        .byte_offset()
        .unwrap_or_else(|| byte_offset(text, span.start.index()));
    text.get(start..)?
        .find(['"', '\''])
        .map(|quote| start + quote)
}

/// True if YAML (1.1 or 1.2, as serde-saphyr reads numbers and booleans) would read `text`,
/// written plain, as a number or boolean.
fn reads_as_literal(text: &str) -> bool {
    const BOOLEANS: [&str; 8] = ["true", "false", "yes", "no", "on", "off", "y", "n"];
    let text = text.trim();
    if BOOLEANS.iter().any(|b| b.eq_ignore_ascii_case(text)) {
        return true;
    }
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits = unsigned.replace('_', "");
    let radix = |prefix: [&str; 2], radix: u32| {
        prefix
            .iter()
            .find_map(|p| digits.strip_prefix(p))
            .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix)))
    };
    [".inf", ".nan"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(unsigned))
        || radix(["0x", "0X"], 16)
        || radix(["0o", "0O"], 8)
        || radix(["0b", "0B"], 2)
        || (digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
            && digits.parse::<f64>().is_ok())
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
    let mut nearest = None;
    walk_fields(text, |path, _, span| {
        let at = position(span.start.line(), span.start.col() + 1);
        if path == field {
            nearest = at;
            return ControlFlow::Break(());
        }
        if field
            .strip_prefix(path)
            .is_some_and(|rest| path.is_empty() || rest.starts_with(['.', '[']))
        {
            nearest = at;
        }
        ControlFlow::Continue(())
    });
    nearest
}

/// Calls `visit` with the field path, event and span of every node of `text` that a field path
/// names (the document, and every node in value position outside complex mapping keys), in
/// document order, until it breaks. A syntax error ends the walk.
fn walk_fields(text: &str, mut visit: impl FnMut(&str, &Event<'_>, &Span) -> ControlFlow<()>) {
    let mut open: Vec<Open> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { return };
        let opens = match &event {
            Event::MappingStart(..) => Some(Next::Key),
            Event::SequenceStart(..) => Some(Next::Item(0)),
            Event::Scalar(..) | Event::Alias(..) => None,
            Event::MappingEnd | Event::SequenceEnd => {
                open.pop();
                continue;
            }
            Event::DocumentEnd => return,
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
        if let Some(path) = &path
            && visit(path, &event, &span).is_break()
        {
            return;
        }
        if let Some(next) = opens {
            open.push(Open { path, next });
        }
    }
}

/// The top-level lists whose entries [`parse_entries`] parses one by one.
const LISTS: [&str; 3] = ["listeners", "route_configs", "clusters"];

/// One entry of a top-level list: its path (`clusters[2]`) and where its node starts and ends.
struct Entry {
    path: String,
    list: &'static str,
    /// Its position in its list.
    index: usize,
    start: Marker,
    end: Marker,
    /// Whether it uses an anchor (one of its own, or an earlier entry's).
    uses_aliases: bool,
}

/// The entries of the top-level lists, in document order; `None` for a document that does not
/// parse as YAML.
fn entries(text: &str) -> Option<Vec<Entry>> {
    let mut found = Vec::new();
    let mut depth = 0usize;
    // The top-level key whose value is being read, when it is one of LISTS.
    let mut list: Option<&'static str> = None;
    let mut top_key_next = false;
    let mut open: Option<(usize, Marker)> = None;
    let mut uses_aliases = false;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.ok()?;
        let (starts, ends) = match &event {
            Event::MappingStart(..) | Event::SequenceStart(..) => (true, false),
            Event::MappingEnd | Event::SequenceEnd => (false, true),
            Event::Scalar(..) | Event::Alias(..) => (true, true),
            _ => continue,
        };
        if starts {
            if depth == 1 {
                // A top-level key, then its value, in turn.
                top_key_next = !top_key_next;
                if top_key_next {
                    list = match &event {
                        Event::Scalar(key, ..) => LISTS.into_iter().find(|l| *l == key.as_ref()),
                        _ => None,
                    };
                }
            } else if depth == 2
                && let Some(list) = list
            {
                let index = found.iter().filter(|e: &&Entry| e.list == list).count();
                open = Some((index, span.start));
                uses_aliases = false;
            }
        }
        uses_aliases |= matches!(event, Event::Alias(..));
        let closes_entry = ends && depth == if starts { 2 } else { 3 };
        if closes_entry && let (Some(list), Some((index, start))) = (list, open.take()) {
            found.push(Entry {
                path: format!("{list}[{index}]"),
                list,
                index,
                start,
                end: span.end,
                uses_aliases,
            });
        }
        match (starts, ends) {
            (true, false) => depth += 1,
            (false, true) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Some(found)
}

/// The byte offset of the character at `index` in `text`.
fn byte_offset(text: &str, index: usize) -> usize {
    text.char_indices()
        .nth(index)
        .map_or(text.len(), |(i, _)| i)
}

/// Parses the node of `entry`; errors carry the entry's path and positions in `text`. An entry
/// that uses anchors is read in place, where the anchors of earlier entries are known, unless
/// what fails there is elsewhere in the document; other entries are read alone, as documents
/// of their own, so that nothing outside them can fail them.
fn parse_entry<T: DeserializeOwned>(text: &str, entry: &Entry) -> Result<T, ConfigError> {
    if !entry.uses_aliases {
        return parse_alone(text, entry);
    }
    let seed = EntryOf {
        list: entry.list,
        index: entry.index,
        entry: PhantomData,
    };
    match parse_seed(text, seed) {
        Err(err) if !within_entries(&err, std::slice::from_ref(entry)) => parse_alone(text, entry),
        parsed => parsed,
    }
}

/// Parses the node of `entry` alone, as a document of its own whose lines keep their columns;
/// errors carry the entry's path and positions in `text`.
fn parse_alone<T: DeserializeOwned>(text: &str, entry: &Entry) -> Result<T, ConfigError> {
    let node = &text[byte_offset(text, entry.start.index())..byte_offset(text, entry.end.index())];
    let document = format!("{}{node}", " ".repeat(entry.start.col()));
    parse::<T>(&document).map_err(|err| {
        let mut err = err.within(&entry.path);
        err.position = err.position.map(|p| Position {
            line: p.line + entry.start.line() - 1,
            column: p.column,
        });
        err
    })
}

/// The top level of a config without its lists, to find errors outside them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default)]
    admin: Option<super::AdminSpec>,
    #[serde(default = "super::default_drain_time", with = "humantime_serde")]
    drain_time: std::time::Duration,
    #[serde(default)]
    limits: super::LimitsSpec,
    #[serde(default)]
    node: Option<super::NodeSpec>,
    #[serde(default)]
    metrics: super::MetricsSpec,
    #[serde(default)]
    dynamic: Option<super::DynamicSpec>,
    #[serde(default, rename = "listeners")]
    _listeners: IgnoredAny,
    #[serde(default, rename = "route_configs")]
    _route_configs: IgnoredAny,
    #[serde(default, rename = "clusters")]
    _clusters: IgnoredAny,
}

/// A stand-in for an entry that did not parse, named as it names itself (when it does), so
/// that what refers to it is not reported missing. The names are read from the document's
/// events, not deserialized: what made the entry fail (a duplicate key, an infinite number)
/// may fail any deserialization of it.
fn stand_in<T: DeserializeOwned>(text: &str, entry: &Entry) -> Option<T> {
    let name = scalar_at(text, &format!("{}.name", entry.path)).unwrap_or_default();
    let value = match entry.list {
        "listeners" => serde_json::json!({
            "name": name,
            "address": "127.0.0.1:0",
            "protocol": "",
            "route_config": scalar_at(text, &format!("{}.route_config", entry.path))
                .unwrap_or_default(),
        }),
        _ => serde_json::json!({ "name": name }),
    };
    serde_json::from_value(value).ok()
}

/// The text of the scalar at `field` in `text`, if a scalar is written there.
fn scalar_at(text: &str, field: &str) -> Option<String> {
    let mut found = None;
    walk_fields(text, |path, event, _| {
        if path != field {
            return ControlFlow::Continue(());
        }
        if let Event::Scalar(value, ..) = event {
            found = Some(value.to_string());
        }
        ControlFlow::Break(())
    });
    found
}

/// True if `err` is about a place inside one of `entries`, or one of their lists: each entry's
/// own parse reports it.
fn within_entries(err: &ConfigError, entries: &[Entry]) -> bool {
    let in_list = entries.iter().any(|entry| {
        err.field
            .strip_prefix(entry.list)
            .is_some_and(|rest| rest.starts_with(['.', '[']))
    });
    let at = |marker: &Marker| (marker.line(), marker.col() + 1);
    let inside = err.position.is_some_and(|p| {
        entries
            .iter()
            .any(|e| (at(&e.start)..=at(&e.end)).contains(&(p.line, p.column)))
    });
    in_list || inside
}

/// Parses a config that failed to parse as a whole entry by entry: every entry's error, the
/// config of the entries that parsed (with stand-ins for those that did not), and the paths of
/// the entries that did not, whose semantic errors are not worth reporting. `None` when the
/// document is not YAML at all.
pub(crate) fn parse_entries(text: &str) -> Option<(super::Config, Vec<ConfigError>, Vec<String>)> {
    let entries = entries(text)?;
    let mut errors = Vec::new();
    let mut failed = Vec::new();
    let mut config = super::Config::default();
    match parse::<TopLevel>(text) {
        Ok(top) => {
            config.admin = top.admin;
            config.drain_time = top.drain_time;
            config.limits = top.limits;
            config.node = top.node;
            config.metrics = top.metrics;
            config.dynamic = top.dynamic;
        }
        // An error inside a list is its entry's, which reports it below.
        Err(err) if within_entries(&err, &entries) => {}
        Err(err) => errors.push(err),
    }
    for entry in &entries {
        let parsed = match entry.list {
            "listeners" => one::<super::ListenerSpec, _>(text, entry, &mut config.listeners),
            "route_configs" => {
                one::<super::RouteConfigSpec, _>(text, entry, &mut config.route_configs)
            }
            _ => one::<super::ClusterSpec, _>(text, entry, &mut config.clusters),
        };
        if let Err(err) = parsed {
            errors.push(err);
            failed.push(entry.path.clone());
        }
    }
    Some((config, errors, failed))
}

/// Parses `entry` onto `list` (a stand-in when it does not parse).
fn one<T: DeserializeOwned, L: From<T>>(
    text: &str,
    entry: &Entry,
    list: &mut Vec<L>,
) -> Result<(), ConfigError> {
    match parse_entry::<T>(text, entry) {
        Ok(spec) => {
            list.push(spec.into());
            Ok(())
        }
        Err(err) => {
            list.extend(stand_in::<T>(text, entry).map(L::from));
            Err(err)
        }
    }
}

/// One entry of a top-level list of the document, as a `T`; the rest of the document is
/// skipped (the top level's own parse checks it).
struct EntryOf<T> {
    list: &'static str,
    index: usize,
    entry: PhantomData<fn() -> T>,
}

impl<T> Clone for EntryOf<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for EntryOf<T> {}

impl<T: DeserializeOwned> Seed for EntryOf<T> {
    type Value = T;
    fn deserialize<'de, D: serde::Deserializer<'de>>(self, from: D) -> Result<T, D::Error> {
        from.deserialize_map(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for EntryOf<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == self.list {
                found = map.next_value_seed(ItemOf(self))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        found.ok_or_else(|| de::Error::custom(format!("no {}[{}]", self.list, self.index)))
    }
}

/// The list of an [`EntryOf`]: its entry, if the list is that long.
struct ItemOf<T>(EntryOf<T>);

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for ItemOf<T> {
    type Value = Option<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, from: D) -> Result<Option<T>, D::Error> {
        from.deserialize_seq(self)
    }
}

impl<'de, T: DeserializeOwned> Visitor<'de> for ItemOf<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        for _ in 0..self.0.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(None);
            }
        }
        let found = seq.next_element::<T>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(found)
    }
}
