//! Test support: a management server and resources shaped as control planes send them.

pub mod fixtures;
pub mod management_server;

/// The result of a test.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
