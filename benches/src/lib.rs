//! The criterion benches of the codecs live in `benches/` (`cargo bench -p metaprotocol-benches`).
//! This empty library exists only because Cargo requires a package to have a library or binary
//! target.
