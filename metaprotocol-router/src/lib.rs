//! The metaprotocol-rs engine: layer-7 traffic management for any request/response RPC protocol.
//!
//! Given a [`Config`] (listeners, route configs, clusters; see the repository's
//! `docs/config.md`) and a [`metaprotocol_core::CodecRegistry`] of protocols, [`Proxy::start`]
//! binds the listeners and serves: each request is decoded by its listener's codec, run through
//! the listener's filters, matched against the listener's route table, sent to an endpoint of
//! the chosen cluster over a connection shared by all clients (request ids rewritten and
//! restored), and answered, with a protocol-correct local reply whenever the proxy itself has to
//! say no.
//!
//! Route tables and clusters are immutable snapshots swapped atomically
//! ([`Proxy::update_route_config`], [`Proxy::update_cluster`], [`Proxy::reload`]): requests in
//! flight finish on the snapshot they started with, endpoints that stay keep their connections,
//! and no client connection is closed. Listeners are added and removed at run time, each with
//! its own drain.
//!
//! The engine is built to be extended: protocols implement [`metaprotocol_core::Codec`],
//! filters implement [`metaprotocol_core::L7Filter`] and are registered in a
//! [`FilterRegistry`]; every filter hook sees the request's
//! [`metaprotocol_core::RequestRecord`]. Metrics are exposed by [`Metrics::render`] or joined to
//! an embedder's own `prometheus_client` registry with [`Metrics::collector`].
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
//!
//! Configs are checked before anything runs; a rejection names the field, its line and column:
//!
//! ```
//! let err = metaprotocol_router::Config::from_yaml(
//!     "listeners:\n  - { name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: nope }\n",
//! )
//! .err()
//! .map(|e| e.to_string());
//! assert_eq!(
//!     err.as_deref(),
//!     Some("listeners[0].route_config (line 2, column 70): no route config named `nope`")
//! );
//! ```
//!
//! The engine is also a client ([`RouterClient`]): calls go through the same routes, clusters
//! and filters, as a `tower_service::Service`. The script filters `lua` and `wasm` are cargo
//! features of the same names.

mod accept;
mod access_log;
mod admin;
mod backlog;
mod client;
mod cluster;
pub mod config;
mod file_stamp;
mod filters;
mod health;
mod http_server;
mod lb;
mod panics;
mod proxy;
mod published;
mod route;
mod router;
mod server;
mod stats;
mod text;
mod trace;
mod transport;
mod upstream;
mod waiting;

#[cfg(test)]
mod testing;

pub use admin::LogControl;
pub use client::{CallError, Client, ClientOptions, RouterClient, RouterClientBuilder};
pub use cluster::{BreakerStatus, ClusterStatus, EndpointStatus, HealthState};
pub use config::{Config, ConfigError, MAX_CONFIG_FILE_BYTES};
pub use filters::{FilterContext, FilterFactory, FilterRegistry, SharedClients};
pub use http_server::{serve_http, serve_http_within};
pub use proxy::{
    ACCESS_LOG_FLUSH_TIMEOUT, CONFIG_FILE_SETTLE, ConfigFileStatus, DEFAULT_DRAIN_TIMEOUT,
    DynamicSource, DynamicUpdate, Proxy, ProxyBuilder, ReloadSummary, ResourceId, ResourceKind,
    ResourceState, ResourceStatus, SHUTDOWN_NOW_GRACE, StartError, UpdateError,
};
pub use route::{DEFAULT_ROUTE_TIMEOUT, RouteCheck, RouteDestination, RouteMatch, UnknownListener};
pub use server::{
    DEFAULT_BUSY_POLL, DEFAULT_IDLE_TIMEOUT, DEFAULT_LINGER, IdlePoll, kernel_idle_poll,
};
pub use stats::{
    Counter, DurationHistogram, ExpositionFormat, FamilySnapshot, Gauge, HistogramSnapshot, Labels,
    MetricKind, Metrics, MetricsCollector, MetricsScope, SeriesValue, UpDownCounter,
};
pub use transport::{GrpcTlsConnector, TlsConnector};
pub use upstream::UpstreamError;
