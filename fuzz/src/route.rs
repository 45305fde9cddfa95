//! The route match: an arbitrary route table (conditions of every kind on a few metadata keys,
//! each route sending to a cluster, a sticky split or a direct response) and an arbitrary
//! request (metadata, and routing keys a filter set), asked of the engine through
//! [`RouteCheck`] and of a plain model written here from the config reference.
//!
//! What must hold: the config is accepted (every generated table is valid); the engine picks
//! the route the model picks (the first whose conditions all hold, routing keys winning over
//! metadata, `invert` negating, `regex` matching the whole value) and the destination the model
//! expects; a sticky split sends one request to one side every time.

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use metaprotocol_core::{ByteStr, Metadata, RoutingKeys, RoutingView};
use metaprotocol_router::{Config, Proxy, RouteCheck, RouteDestination};

/// The metadata keys conditions and requests use: few, so that they meet.
const KEYS: [&str; 4] = ["method", "interface", "version", "user"];
/// The characters of values and pattern literals: few, and `.` among them, so that a regex's
/// `.` and an escaped `\.` differ.
const CHARS: [char; 4] = ['a', 'b', '.', '-'];
/// Longest value or literal, in characters.
const MAX_LEN: usize = 6;
/// Most routes in a table: past 16 the engine indexes a table by the values its routes match
/// exactly, and the index must pick what a scan picks.
const MAX_ROUTES: usize = 40;
/// Most conditions in a route.
const MAX_CONDITIONS: usize = 8;

/// One generated case: see the [module docs](self).
#[derive(Debug, Arbitrary)]
pub struct RouteCase {
    routes: Vec<CaseRoute>,
    metadata: Vec<(Key, Value)>,
    routing_keys: Vec<(Key, Value)>,
}

#[derive(Debug, Arbitrary)]
struct CaseRoute {
    conditions: Vec<Condition>,
    action: Action,
}

#[derive(Debug, Arbitrary)]
enum Action {
    Cluster,
    /// A 50/50 split of the two clusters keyed on `user`.
    StickySplit,
    Direct,
}

#[derive(Debug, Arbitrary)]
struct Condition {
    key: Key,
    test: Test,
    invert: bool,
}

#[derive(Debug, Arbitrary)]
enum Test {
    Exact(Value),
    Prefix(Value),
    Suffix(Value),
    Contains(Value),
    Regex(Vec<Piece>),
    Present(bool),
}

/// A piece of a regex: a literal character, `.` or `.*`.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Piece {
    Literal(u8),
    AnyChar,
    AnyRun,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct Key(u8);

#[derive(Debug, Arbitrary)]
struct Value(Vec<u8>);

impl RouteCase {
    /// Builds a case from raw fuzzer (or corpus) bytes, as the fuzz target does.
    pub fn from_bytes(data: &[u8]) -> arbitrary::Result<Self> {
        Self::arbitrary_take_rest(arbitrary::Unstructured::new(data))
    }
}

impl CaseRoute {
    /// The conditions that the config uses.
    fn conditions(&self) -> &[Condition] {
        &self.conditions[..self.conditions.len().min(MAX_CONDITIONS)]
    }
}

impl Key {
    fn name(self) -> &'static str {
        KEYS[usize::from(self.0) % KEYS.len()]
    }
}

impl Value {
    fn text(&self) -> String {
        self.0.iter().take(MAX_LEN).map(|&b| char_of(b)).collect()
    }
}

fn char_of(byte: u8) -> char {
    CHARS[usize::from(byte) % CHARS.len()]
}

impl Piece {
    /// The piece in regex syntax.
    fn regex(self) -> String {
        match self {
            Self::Literal(b) => match char_of(b) {
                '.' => "\\.".to_owned(),
                c => c.to_string(),
            },
            Self::AnyChar => ".".to_owned(),
            Self::AnyRun => ".*".to_owned(),
        }
    }
}

/// Checks one case (see the [module docs](self)); returns the name of the route the request
/// took, if any, for tests of the check itself.
pub fn check(case: &RouteCase) -> Option<String> {
    let routes = &case.routes[..case.routes.len().min(MAX_ROUTES)];
    let yaml = config_yaml(routes);
    let config = match Config::from_yaml(&yaml) {
        Ok(config) => config,
        Err(err) => panic!("a valid table is rejected: {err}\n{yaml}"),
    };
    let _runtime = crate::config::runtime().enter();
    let route_check = match Proxy::builder(config)
        .codecs(crate::config::codecs())
        .route_check()
    {
        Ok(check) => check,
        Err(err) => panic!("a valid table does not build: {err}\n{yaml}"),
    };

    let metadata: Metadata = case
        .metadata
        .iter()
        .map(|(k, v)| (ByteStr::from_static(k.name()), ByteStr::from(v.text())))
        .collect();
    let mut keys = RoutingKeys::new();
    for (k, v) in &case.routing_keys {
        keys.set(ByteStr::from_static(k.name()), ByteStr::from(v.text()));
    }
    let mut seen = BTreeMap::new();
    for (k, v) in case.metadata.iter().chain(&case.routing_keys) {
        seen.insert(k.name(), v.text());
    }

    let expected = routes
        .iter()
        .position(|r| r.conditions().iter().all(|c| holds(c, &seen)));
    let view = RoutingView {
        metadata: &metadata,
        keys: &keys,
    };
    let answer = ask(&route_check, &view);
    let again = ask(&route_check, &view);
    assert_eq!(answer, again, "one request, two answers\n{yaml}");
    match (expected, answer) {
        (None, None) => None,
        (Some(index), Some((route, destination))) => {
            assert_eq!(route, format!("r{index}"), "{seen:?}\n{yaml}");
            let sticky = seen.contains_key("user");
            assert_destination(&routes[index].action, sticky, &destination, &yaml);
            Some(route)
        }
        (expected, answer) => {
            panic!("model: route {expected:?}, engine: {answer:?}\n{seen:?}\n{yaml}")
        }
    }
}

fn ask(check: &RouteCheck, view: &RoutingView<'_>) -> Option<(String, RouteDestination)> {
    match check.check("front", view) {
        Ok(found) => found.map(|m| (m.route, m.destination)),
        Err(err) => panic!("the listener is there: {err}"),
    }
}

fn assert_destination(action: &Action, sticky: bool, destination: &RouteDestination, yaml: &str) {
    let fine = match (action, destination) {
        (Action::Cluster, RouteDestination::Cluster { name, subset }) => {
            name == "one" && subset.is_empty()
        }
        (Action::StickySplit, RouteDestination::Cluster { name, .. }) => {
            sticky && (name == "one" || name == "two")
        }
        (Action::StickySplit, RouteDestination::Split(sides)) => !sticky && sides.len() == 2,
        (Action::Direct, RouteDestination::DirectResponse(spec)) => spec.kind == "unauthorized",
        _ => false,
    };
    assert!(
        fine,
        "{action:?} (key present: {sticky}) gave {destination:?}\n{yaml}"
    );
}

/// The model: does `condition` hold for a request whose visible values are `seen`?
fn holds(condition: &Condition, seen: &BTreeMap<&str, String>) -> bool {
    let value = seen.get(condition.key.name());
    let hit = match (&condition.test, value) {
        (Test::Present(want), value) => value.is_some() == *want,
        (_, None) => false,
        (Test::Exact(v), Some(value)) => *value == v.text(),
        (Test::Prefix(v), Some(value)) => value.starts_with(&v.text()),
        (Test::Suffix(v), Some(value)) => value.ends_with(&v.text()),
        (Test::Contains(v), Some(value)) => value.contains(&v.text()),
        (Test::Regex(pattern), Some(value)) => {
            let chars: Vec<char> = value.chars().collect();
            glob(pieces(pattern), &chars)
        }
    };
    hit != condition.invert
}

/// The pieces of a pattern that the config uses.
fn pieces(pieces: &[Piece]) -> &[Piece] {
    &pieces[..pieces.len().min(MAX_LEN)]
}

/// Whether `pattern` matches all of `value`.
fn glob(pattern: &[Piece], value: &[char]) -> bool {
    match pattern.split_first() {
        None => value.is_empty(),
        Some((Piece::AnyRun, rest)) => (0..=value.len()).any(|skip| glob(rest, &value[skip..])),
        Some((piece, rest)) => match value.split_first() {
            Some((c, tail)) => {
                let fits = match piece {
                    Piece::Literal(b) => char_of(*b) == *c,
                    _ => true,
                };
                fits && glob(rest, tail)
            }
            None => false,
        },
    }
}

/// The config of a case: one Dubbo listener, two clusters, the routes named `r0`, `r1`, ...
fn config_yaml(routes: &[CaseRoute]) -> String {
    let mut yaml = String::from(
        "listeners:\n  - { name: front, address: 127.0.0.1:0, protocol: dubbo, route_config: r }\n\
         clusters:\n  - { name: one, endpoints: [ { address: 127.0.0.1:1 } ] }\n\
         \x20 - { name: two, endpoints: [ { address: 127.0.0.1:2 } ] }\n\
         route_configs:\n  - name: r\n",
    );
    yaml.push_str(if routes.is_empty() {
        "    routes: []\n"
    } else {
        "    routes:\n"
    });
    for (i, route) in routes.iter().enumerate() {
        yaml.push_str(&format!(
            "      - name: r{i}\n        match: {{ metadata: [ "
        ));
        for condition in route.conditions() {
            yaml.push_str(&condition_yaml(condition));
            yaml.push_str(", ");
        }
        yaml.push_str("] }\n");
        yaml.push_str(match route.action {
            Action::Cluster => "        route: { cluster: one }\n",
            Action::StickySplit => {
                "        route: { hash_on: user, weighted_clusters: [ { cluster: one, weight: 1 }, { cluster: two, weight: 1 } ] }\n"
            }
            Action::Direct => "        direct_response: { kind: unauthorized }\n",
        });
    }
    yaml
}

/// One condition as a flow mapping; strings are written as JSON strings (valid YAML).
fn condition_yaml(condition: &Condition) -> String {
    let quote = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let test = match &condition.test {
        Test::Exact(v) => format!("exact: {}", quote(&v.text())),
        Test::Prefix(v) => format!("prefix: {}", quote(&v.text())),
        Test::Suffix(v) => format!("suffix: {}", quote(&v.text())),
        Test::Contains(v) => format!("contains: {}", quote(&v.text())),
        Test::Regex(p) => {
            let pattern: String = pieces(p).iter().map(|p| p.regex()).collect();
            format!("regex: {}", quote(&pattern))
        }
        Test::Present(want) => format!("present: {want}"),
    };
    format!(
        "{{ key: {}, {test}, invert: {} }}",
        condition.key.name(),
        condition.invert
    )
}
