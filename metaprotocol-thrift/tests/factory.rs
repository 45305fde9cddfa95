//! The factory: registration, options, upstream variants and id range.

use bytes::BytesMut;
use metaprotocol_core::{CodecOptions, CodecRegistry, Side, WireVariant};
use metaprotocol_thrift::{
    PROTOCOL, PROTOCOL_OPTION, Protocol, TRANSPORT, ThriftFormat, Transport,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A framed binary CALL `m`, seqid 3, empty arguments.
const FRAMED_BINARY_CALL: [u8; 18] = [0, 0, 0, 14, 0x80, 1, 0, 1, 0, 0, 0, 1, b'm', 0, 0, 0, 3, 0];

#[test]
fn registered_cluster_options_pick_the_upstream_variant() -> TestResult {
    let mut registry = CodecRegistry::new();
    metaprotocol_thrift::register(&mut registry);
    let mut options = CodecOptions::default();
    options.insert(TRANSPORT, "header");
    options.insert(PROTOCOL_OPTION, "compact");
    let cluster = registry
        .build(PROTOCOL, &options)
        .ok_or("not registered")??;
    let listener = registry
        .build(PROTOCOL, &CodecOptions::default())
        .ok_or("not registered")??;
    assert_eq!(cluster.protocol(), PROTOCOL);
    assert_eq!(cluster.max_request_id(), i32::MAX as u64);

    let mut src = BytesMut::from(&FRAMED_BINARY_CALL[..]);
    let request = listener
        .new_codec(Side::Downstream, WireVariant::DEFAULT)
        .decode(&mut src)?
        .ok_or("incomplete")?;
    let framed_binary = ThriftFormat::new(Transport::Framed, Protocol::Binary);
    assert_eq!(request.variant, framed_binary.to_variant());
    assert_eq!(listener.upstream_variant(&request), request.variant);
    let header_compact = ThriftFormat::new(Transport::Header, Protocol::Compact);
    assert_eq!(
        cluster.upstream_variant(&request),
        header_compact.to_variant()
    );

    // Only the transport fixed: the protocol follows the request.
    let mut options = CodecOptions::default();
    options.insert(TRANSPORT, "unframed");
    let unframed = registry
        .build(PROTOCOL, &options)
        .ok_or("not registered")??;
    let unframed_binary = ThriftFormat::new(Transport::Unframed, Protocol::Binary);
    assert_eq!(
        unframed.upstream_variant(&request),
        unframed_binary.to_variant()
    );
    Ok(())
}

#[test]
fn upstream_codecs_expect_their_connections_format() -> TestResult {
    let factory = metaprotocol_thrift::ThriftCodecFactory::from_options(&CodecOptions::default())?;
    let unframed = ThriftFormat::new(Transport::Unframed, Protocol::Binary).to_variant();
    let mut codec = factory.new_codec(Side::Upstream, unframed);
    let mut src = BytesMut::from(&FRAMED_BINARY_CALL[..]);
    // Read as unframed, the length prefix is a lax name length: a message still incomplete.
    assert!(matches!(codec.decode(&mut src), Ok(None)));
    let framed = ThriftFormat::new(Transport::Framed, Protocol::Binary).to_variant();
    let mut src = BytesMut::from(&FRAMED_BINARY_CALL[..]);
    let message = factory
        .new_codec(Side::Upstream, framed)
        .decode(&mut src)?
        .ok_or("incomplete")?;
    assert_eq!(message.request_id, 3);
    Ok(())
}

#[test]
fn bad_options_name_their_field() {
    let mut options = CodecOptions::default();
    options.insert(PROTOCOL_OPTION, "json");
    let error = metaprotocol_thrift::ThriftCodecFactory::from_options(&options).err();
    assert_eq!(error.map(|e| e.field), Some(PROTOCOL_OPTION.to_owned()));
}
