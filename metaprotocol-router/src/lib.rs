//! The metaprotocol-rs engine: layer-7 traffic management for any request/response RPC protocol.
//!
//! Given a [`Config`] (listeners, route configs, clusters; see the project's CONFIG.md) and a
//! [`metaprotocol_core::CodecRegistry`] of protocols, [`Proxy::start`] binds the listeners and
//! serves: each request is decoded by its listener's codec, run through the listener's filters,
//! matched against the listener's route table, sent to an endpoint of the chosen cluster over a
//! connection shared by all clients (request ids rewritten and restored), and answered, with a
//! protocol-correct local reply whenever the proxy itself has to say no.
//!
//! Route tables are immutable snapshots swapped atomically ([`Proxy::update_route_config`]):
//! in-flight requests finish on the table they started with, and no connection is closed.
//!
//! ```no_run
//! # async fn run(codecs: metaprotocol_core::CodecRegistry) -> Result<(), Box<dyn std::error::Error>> {
//! use metaprotocol_router::{Config, Proxy};
//!
//! let config = Config::from_yaml(r#"
//! listeners:
//!   - { name: in, address: 127.0.0.1:20880, protocol: dubbo, route_config: routes }
//! route_configs:
//!   - name: routes
//!     routes:
//!       - route: { cluster: backend }
//! clusters:
//!   - name: backend
//!     endpoints: [ { address: 127.0.0.1:20881 } ]
//! "#)?;
//! let proxy = Proxy::start(config, codecs).await?;
//! println!("listening on {:?}", proxy.listener_addr("in"));
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
pub mod cluster;
pub mod config;
pub mod filters;
pub mod lb;
mod proxy;
pub mod route;
mod server;
pub mod stats;
pub mod upstream;

pub use config::{Config, ConfigError};
pub use filters::FilterRegistry;
pub use proxy::{DEFAULT_DRAIN_TIMEOUT, Proxy, ProxyBuilder, StartError};
pub use server::{DEFAULT_ROUTE_TIMEOUT, TIMEOUT_MS_KEY};
