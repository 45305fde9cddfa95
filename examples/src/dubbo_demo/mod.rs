//! A sample Dubbo world for the demo and the tests: providers of
//! `org.apache.dubbo.samples.basic.api.DemoService` that say hello and tell who they are, and a
//! client that calls them (directly or through the proxy) over one multiplexed connection.

mod client;
mod provider;

pub use client::{DubboClient, Reply};

pub use provider::{
    DemoProvider, EXCEPTION_METHOD, FAILING_METHOD, HANG_UP_METHOD, SLOW_METHOD, SeenRequest,
};

/// The sample service's interface name.
pub const DEMO_SERVICE: &str = "org.apache.dubbo.samples.basic.api.DemoService";
/// The sample service's version.
pub const DEMO_VERSION: &str = "1.0.0";
