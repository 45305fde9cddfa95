//! The brpc codec for metaprotocol-rs (under construction).
