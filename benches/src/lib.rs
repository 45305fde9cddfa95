//! The project's performance instruments.
//!
//! - [`codec_bench`]: what the per-codec criterion benches share.

pub mod codec_bench;
