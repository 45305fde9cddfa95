//! The engine as a client, for programs that call services rather than proxy them.
//!
//! - [`RouterClient`]: the whole engine behind one call. Built from the same config model as a
//!   proxy (a route config, its clusters with their load balancing, timeouts and retries, and a
//!   filter chain), it takes a request [`Message`](metaprotocol_core::Message) built with a
//!   codec crate's builders and returns the response `Message`. It is a
//!   [`tower_service::Service`], so tower's layers (timeouts, concurrency limits, load shedding)
//!   wrap it; an HTTP gateway is a handler that builds a message and calls it
//!   (`examples/examples/http_gateway.rs`).
//! - [`Client`]: a client of one address over the engine's multiplexed connections, for tools
//!   and tests that need no routing.

mod call;
mod direct;
mod error;
mod routed;

pub use direct::{Client, ClientOptions};
pub use error::CallError;
pub use routed::{RouterClient, RouterClientBuilder};
