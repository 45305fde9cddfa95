//! [`DubboCodecFactory`]: the configured protocol.

use std::sync::Arc;

use bytes::BytesMut;
use metaprotocol_core::{
    Codec, CodecCounter, CodecFactory, CodecOptions, Message, OptionsError, Probe, Side,
    WireVariant,
};

use crate::header::HEADER_LEN;
use crate::{DubboCodec, PROTOCOL};

/// Creates [`DubboCodec`]s. Dubbo requests carry 64-bit ids and responses may come in any
/// order, so upstream connections are multiplexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DubboCodecFactory {
    max_frame_bytes: usize,
}

impl DubboCodecFactory {
    /// A factory whose codecs accept frames of at most `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    /// Builds a factory from a listener's or cluster's codec options. Dubbo takes only
    /// `max_frame_bytes`, which must leave room for the 16-byte header.
    pub fn from_options(options: &CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> {
        options.allow_only(&[])?;
        if options.max_frame_bytes <= HEADER_LEN {
            return Err(OptionsError::new(
                "max_frame_bytes",
                "must be larger than the 16-byte Dubbo header",
            ));
        }
        Ok(Arc::new(Self::new(options.max_frame_bytes)))
    }
}

impl CodecFactory for DubboCodecFactory {
    fn protocol(&self) -> &'static str {
        PROTOCOL
    }

    fn new_codec(&self, _side: Side, _variant: WireVariant) -> Box<dyn Codec> {
        Box::new(DubboCodec::new(self.max_frame_bytes))
    }

    /// Upstream requests carry no client-specific encoding, so all clients share connections.
    fn upstream_variant(&self, _request: &Message) -> WireVariant {
        WireVariant::DEFAULT
    }

    /// Java clients and servers hold request ids in a signed `long`.
    fn max_request_id(&self) -> u64 {
        i64::MAX.unsigned_abs()
    }

    /// A two-way heartbeat, which every provider answers; Dubbo has no method probe (a call
    /// needs an interface, a version and argument types the health check cannot know).
    fn probe_request(&self, probe: Probe<'_>) -> Option<Message> {
        match probe {
            Probe::Heartbeat => {
                let mut frame = BytesMut::from(&crate::build::heartbeat(0)[..]);
                DubboCodec::new(self.max_frame_bytes)
                    .decode(&mut frame)
                    .ok()
                    .flatten()
            }
            _ => None,
        }
    }

    /// `events_unanswered`: the event requests whose data is neither null (a heartbeat) nor
    /// `R` (read-only), which the codecs pass over unanswered, as Java Dubbo does, from clients
    /// and providers, over every Dubbo listener and cluster of the process.
    fn counters(&self) -> Vec<CodecCounter> {
        vec![CodecCounter {
            name: "events_unanswered",
            help: "Dubbo event requests whose data is neither null (a heartbeat) nor R (read-only), passed over unanswered as Java Dubbo does",
            value: crate::reply::unanswered_events(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_options() {
        let factory = DubboCodecFactory::from_options(&CodecOptions::default());
        assert_eq!(factory.as_ref().map(|f| f.protocol()).ok(), Some("dubbo"));
        assert_eq!(
            factory.as_ref().map(|f| f.max_request_id()).ok(),
            Some(0x7fff_ffff_ffff_ffff)
        );
        let mut unknown = CodecOptions::default();
        unknown.insert("serialization", "json");
        assert!(DubboCodecFactory::from_options(&unknown).is_err());
        assert!(DubboCodecFactory::from_options(&CodecOptions::with_max_frame_bytes(16)).is_err());
    }

    #[test]
    fn the_probe_is_a_two_way_heartbeat() -> Result<(), Box<dyn std::error::Error>> {
        let factory = DubboCodecFactory::new(1 << 20);
        let probe = factory
            .probe_request(Probe::Heartbeat)
            .ok_or("no heartbeat probe")?;
        assert_eq!(probe.kind, metaprotocol_core::MessageKind::Heartbeat);
        assert_eq!(
            probe.frame[2],
            0x80 | 0x40 | 0x20 | 2,
            "request, two-way, event, hessian2"
        );
        let mut encoder = factory.new_codec(Side::Upstream, WireVariant::DEFAULT);
        let mut wire = BytesMut::new();
        let mutation = metaprotocol_core::Mutation::new();
        let params = metaprotocol_core::EncodeParams {
            request_id: 77,
            variant: WireVariant::DEFAULT,
            mutation: &mutation,
        };
        encoder.encode(&probe, &params, &mut wire)?;
        let mut provider = factory.new_codec(Side::Downstream, WireVariant::DEFAULT);
        let seen = provider.decode(&mut wire)?.ok_or("incomplete")?;
        assert_eq!((seen.kind, seen.request_id), (probe.kind, 77));
        let mut answer = BytesMut::new();
        provider.encode_heartbeat_reply(&seen, &mut answer)?;
        let reply = encoder.decode(&mut answer)?.ok_or("incomplete")?;
        assert_eq!(reply.kind, metaprotocol_core::MessageKind::HeartbeatReply);
        assert_eq!(reply.request_id, 77);
        assert!(factory.probe_request(Probe::Method("ping")).is_none());
        Ok(())
    }
}
