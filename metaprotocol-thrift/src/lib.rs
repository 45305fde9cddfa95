//! The thrift codec for metaprotocol-rs (under construction).
