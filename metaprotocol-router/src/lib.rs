//! The metaprotocol-rs engine (under construction).
