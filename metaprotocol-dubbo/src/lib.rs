//! The dubbo codec for metaprotocol-rs (under construction).
