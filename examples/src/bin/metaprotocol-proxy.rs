//! `metaprotocol-proxy`: under construction.
fn main() {}
