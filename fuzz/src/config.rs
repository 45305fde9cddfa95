//! The config check: arbitrary text read as a whole config file and as the single route config
//! or cluster an admin `PUT` carries (text that comes off the network).
//!
//! What must hold: no panic and no hang, whatever the text; a rejection places itself inside the
//! document (a line and column that exist); an accepted config builds with the bundled codecs
//! and built-in filters or is rejected with a reason, and comes back identical after being
//! written out as JSON (what `GET /config` shows) and read again, so nothing the parser accepts
//! is lost or changed by the engine's own view of it.

use std::sync::OnceLock;

use metaprotocol_core::CodecRegistry;
use metaprotocol_router::config::{ClusterSpec, RouteConfigSpec};
use metaprotocol_router::{Config, ConfigError, Proxy};

/// Checks `data` (see the module docs); input that is not UTF-8 is not a config and is skipped.
pub fn parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(text) {
        Ok(config) => accepted(&config, text),
        Err(err) => assert_placed(&err, text),
    }
    check_resource(RouteConfigSpec::from_yaml, text);
    check_resource(ClusterSpec::from_yaml, text);
}

/// An accepted config builds or is rejected with a reason, and survives a JSON round trip.
fn accepted(config: &Config, text: &str) {
    let _runtime = runtime().enter();
    let built = Proxy::builder(config.clone()).codecs(codecs()).check();
    if let Err(err) = built {
        assert!(!err.reason.is_empty(), "a build error without a reason");
        assert_placed(&err.located_in(text), text);
    }
    let json = match serde_json::to_string(config) {
        Ok(json) => json,
        Err(err) => panic!("an accepted config does not serialize: {err}"),
    };
    match Config::from_yaml(&json) {
        Ok(again) => assert_eq!(&again, config, "the config changed through {json}"),
        Err(err) => panic!("an accepted config, written as {json}, is rejected: {err}"),
    }
}

/// A single resource, read by `from_yaml`, parses or is rejected with a position inside the
/// text, and one that parses survives a JSON round trip.
fn check_resource<T>(from_yaml: fn(&str) -> Result<T, ConfigError>, text: &str)
where
    T: serde::Serialize + PartialEq + std::fmt::Debug,
{
    match from_yaml(text) {
        Ok(resource) => {
            let json = match serde_json::to_string(&resource) {
                Ok(json) => json,
                Err(err) => panic!("an accepted resource does not serialize: {err}"),
            };
            match from_yaml(&json) {
                Ok(again) => assert_eq!(again, resource, "the resource changed through {json}"),
                Err(err) => panic!("an accepted resource, written as {json}, is rejected: {err}"),
            }
        }
        Err(err) => assert_placed(&err, text),
    }
}

/// A rejection says why, and its position, if any, is inside `text` (a line that exists, a
/// column no further than one past that line's end).
fn assert_placed(err: &ConfigError, text: &str) {
    assert!(!err.to_string().is_empty(), "an error that says nothing");
    let Some(position) = err.position else {
        return;
    };
    assert!(
        position.line >= 1 && position.column >= 1,
        "{err}: positions count from 1"
    );
    // The parser counts a line break in `\r\n`, `\r` or `\n`; a position may point just past the
    // last line (an unexpected end of the document).
    let lines: Vec<&str> = text.split(['\n', '\r']).collect();
    assert!(
        position.line <= lines.len() + 1,
        "{err}: line {} of a {}-line document",
        position.line,
        lines.len()
    );
}

/// The bundled protocols, as the proxy binary registers them.
pub(crate) fn codecs() -> CodecRegistry {
    let mut registry = CodecRegistry::new();
    metaprotocol_dubbo::register(&mut registry);
    metaprotocol_thrift::register(&mut registry);
    metaprotocol_brpc::register(&mut registry);
    registry
}

/// The runtime building runs in (filters may start tasks).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => panic!("no runtime: {err}"),
        }
    })
}
