//! The request an active health check sends: a `CALL` of a configured method with an empty
//! argument struct. A server answers it with a `REPLY`, or with a `TApplicationException`
//! (`UNKNOWN_METHOD` for a method it does not have): either is a well-formed answer, so the
//! server is alive.

use bytes::BytesMut;
use metaprotocol_core::{Codec, Message};

use crate::ThriftCodec;
use crate::encode::write_frame;
use crate::format::{FormatChoice, Protocol, ThriftFormat, Transport};
use crate::protocol::{self, MessageType};
use crate::theader::{InfoSource, Prelude};

/// The encoding of probes when the cluster's options leave a part open (`auto`): framed binary,
/// what most servers speak.
const DEFAULT_FORMAT: ThriftFormat = ThriftFormat::new(Transport::Framed, Protocol::Binary);

/// A `CALL` of `method` (no arguments) in the parts of `choice` that are fixed, the rest from
/// framed binary, decoded as the codec decodes requests; `None` if it cannot be built (an empty
/// method name).
pub(crate) fn call(choice: FormatChoice, method: &str, max_frame_bytes: usize) -> Option<Message> {
    if method.is_empty() {
        return None;
    }
    let format = choice.resolve(DEFAULT_FORMAT);
    let mut frame = BytesMut::new();
    let prelude = Prelude {
        flags: 0,
        seq: 0,
        protocol: format.protocol,
    };
    write_frame(
        &mut frame,
        format.transport,
        Some((prelude, InfoSource::None)),
        |dst| {
            protocol::write_message_header(
                format.protocol,
                dst,
                method.as_bytes(),
                MessageType::Call,
                0,
            );
            protocol::with_writer(format.protocol, dst, |writer| {
                let saved = writer.struct_begin();
                writer.field_stop();
                writer.struct_end(saved);
            });
            Ok(())
        },
    )
    .ok()?;
    ThriftCodec::new(format.into(), max_frame_bytes)
        .decode(&mut frame)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use metaprotocol_core::{CodecOptions, EncodeParams, MessageKind, Mutation, Probe, Side};

    use super::*;
    use crate::{ApplicationException, ThriftCodecFactory};

    /// In every encoding a cluster may fix, the probe is a call the codec writes with a fresh
    /// seqid and a server's answer to it (here an unknown-method exception) decodes as a
    /// response.
    #[test]
    fn the_probe_is_a_call_in_the_clusters_encoding() -> Result<(), Box<dyn std::error::Error>> {
        for transport in ["framed", "unframed", "header"] {
            for proto in ["binary", "compact"] {
                let mut options = CodecOptions::default();
                options.insert("transport", transport);
                options.insert("protocol", proto);
                let factory = ThriftCodecFactory::from_options(&options)?;
                let probe = factory
                    .probe_request(Probe::Method("healthz"))
                    .ok_or("no probe")?;
                assert_eq!(probe.kind, MessageKind::Request);
                let method = probe.metadata.get("method").map(|m| m.to_string());
                assert_eq!(method.as_deref(), Some("healthz"));
                let variant = factory.upstream_variant(&probe);
                let mut upstream = factory.new_codec(Side::Upstream, variant);
                let mut wire = BytesMut::new();
                let mutation = Mutation::new();
                let params = EncodeParams {
                    request_id: 12,
                    variant,
                    mutation: &mutation,
                };
                upstream.encode(&probe, &params, &mut wire)?;
                let mut server = factory.new_codec(Side::Downstream, Default::default());
                let call = server.decode(&mut wire)?.ok_or("incomplete")?;
                assert_eq!(call.request_id, 12, "{transport} {proto}");
                let mut answer = BytesMut::new();
                let unknown = metaprotocol_core::LocalReply::new(
                    metaprotocol_core::LocalReplyKind::RouteNotFound,
                    "no such method",
                );
                server.encode_local_reply(&call, &unknown, &mut answer)?;
                let reply = upstream.decode(&mut answer)?.ok_or("incomplete")?;
                assert_eq!(reply.kind, MessageKind::Response);
                assert_eq!(reply.request_id, 12);
                assert_eq!(ApplicationException::from_message(&reply)?.kind, 1);
            }
        }
        let auto = ThriftCodecFactory::from_options(&CodecOptions::default())?;
        let probe = auto
            .probe_request(Probe::Method("ping"))
            .ok_or("no probe")?;
        assert_eq!(probe.variant, DEFAULT_FORMAT.to_variant());
        assert!(auto.probe_request(Probe::Heartbeat).is_none());
        assert!(auto.probe_request(Probe::Method("")).is_none());
        Ok(())
    }
}
