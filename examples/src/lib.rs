//! The pieces behind the `metaprotocol-proxy` binary and the examples: a registry with every
//! codec of the project, the in-process Dubbo sample providers and client used by `demo`, and
//! the demo itself.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = metaprotocol_router::Config::from_file("proxy.yaml".as_ref())?;
//! let proxy = metaprotocol_router::Proxy::start(config, metaprotocol_examples::codec_registry()).await?;
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

pub mod demo;

/// The README's code, compiled by `cargo test --doc` so that it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The guides' code (embedding the engine, writing a codec, writing a filter), compiled by
/// `cargo test --doc` likewise.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
#[doc = include_str!("../../docs/writing-a-codec.md")]
#[doc = include_str!("../../docs/writing-a-filter.md")]
pub struct GuideDoctests;

pub mod dubbo_demo;
pub mod gateway;

use metaprotocol_core::CodecRegistry;

/// A registry with the Dubbo, Thrift, bRPC and JSON-RPC codecs.
pub fn codec_registry() -> CodecRegistry {
    let mut registry = CodecRegistry::new();
    metaprotocol_dubbo::register(&mut registry);
    metaprotocol_thrift::register(&mut registry);
    metaprotocol_brpc::register(&mut registry);
    metaprotocol_jsonrpc::register(&mut registry);
    registry
}
