//! Test helpers shared by the crate's unit tests.

use metaprotocol_core::{Codec, CodecFactory, Side, WireVariant};

/// A protocol whose codecs are never used: for tests of parts that only hold a factory.
pub(crate) struct NullCodec;

impl CodecFactory for NullCodec {
    fn protocol(&self) -> &'static str {
        "null"
    }

    fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
        unimplemented!("NullCodec makes no codec: a connection that opens with it panics")
    }
}
