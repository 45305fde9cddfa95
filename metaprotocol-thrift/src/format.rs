//! The Thrift encodings this codec speaks (transport x protocol) and their [`WireVariant`] tags.
//!
//! A [`WireVariant`] is `transport << 8 | protocol`, with the numbers of [`Transport::tag`] and
//! [`Protocol::tag`]; `0` ([`WireVariant::DEFAULT`]) means "not decided", so the engine's default
//! variant never names an encoding by accident.

use std::fmt;

use metaprotocol_core::WireVariant;

/// How messages are delimited on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `TFramedTransport`: a 4-byte big-endian length, then the message.
    Framed,
    /// `TBufferedTransport` and friends: messages back to back, no length prefix.
    Unframed,
    /// `THeaderTransport`: a length, the `0x0FFF` magic, a header block (protocol id,
    /// transforms, info headers), then the message.
    Header,
}

impl Transport {
    /// The transport's number in a [`WireVariant`].
    pub const fn tag(self) -> u16 {
        match self {
            Self::Framed => 1,
            Self::Unframed => 2,
            Self::Header => 3,
        }
    }

    const fn from_tag(tag: u16) -> Option<Self> {
        match tag {
            1 => Some(Self::Framed),
            2 => Some(Self::Unframed),
            3 => Some(Self::Header),
            _ => None,
        }
    }

    /// The config name (`framed`, `unframed`, `header`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Framed => "framed",
            Self::Unframed => "unframed",
            Self::Header => "header",
        }
    }
}

/// How the message itself is serialized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `TBinaryProtocol` (strict or lax message headers; always written strict).
    Binary,
    /// `TCompactProtocol`.
    Compact,
}

impl Protocol {
    /// The protocol's number in a [`WireVariant`].
    pub const fn tag(self) -> u16 {
        match self {
            Self::Binary => 1,
            Self::Compact => 2,
        }
    }

    const fn from_tag(tag: u16) -> Option<Self> {
        match tag {
            1 => Some(Self::Binary),
            2 => Some(Self::Compact),
            _ => None,
        }
    }

    /// The config name (`binary`, `compact`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Binary => "binary",
            Self::Compact => "compact",
        }
    }

    /// The protocol of a message that starts with `first_byte`: compact messages start with
    /// their protocol id `0x82`; strict binary ones with `0x80`, lax binary ones with the high
    /// byte of the name length.
    pub(crate) const fn of_message_starting_with(first_byte: u8) -> Self {
        if first_byte == crate::protocol::compact::PROTOCOL_ID {
            Self::Compact
        } else {
            Self::Binary
        }
    }
}

/// One Thrift encoding: a transport and a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThriftFormat {
    /// How messages are delimited.
    pub transport: Transport,
    /// How messages are serialized.
    pub protocol: Protocol,
}

impl ThriftFormat {
    /// The format of `transport` and `protocol`.
    pub const fn new(transport: Transport, protocol: Protocol) -> Self {
        Self {
            transport,
            protocol,
        }
    }

    /// This format's [`WireVariant`] tag.
    pub const fn to_variant(self) -> WireVariant {
        WireVariant((self.transport.tag() << 8) | self.protocol.tag())
    }

    /// The format a [`WireVariant`] names; `None` for [`WireVariant::DEFAULT`] and unknown tags.
    pub const fn from_variant(variant: WireVariant) -> Option<Self> {
        match (
            Transport::from_tag(variant.0 >> 8),
            Protocol::from_tag(variant.0 & 0xff),
        ) {
            (Some(transport), Some(protocol)) => Some(Self::new(transport, protocol)),
            _ => None,
        }
    }
}

impl fmt::Display for ThriftFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.transport.name(), self.protocol.name())
    }
}

impl From<ThriftFormat> for WireVariant {
    fn from(format: ThriftFormat) -> Self {
        format.to_variant()
    }
}

/// A format with parts left open: `None` parts are detected from the bytes (config `auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FormatChoice {
    /// The required transport, or `None` to detect it.
    pub transport: Option<Transport>,
    /// The required protocol, or `None` to detect it.
    pub protocol: Option<Protocol>,
}

impl FormatChoice {
    /// Fills the open parts of this choice from `format`.
    pub fn resolve(self, format: ThriftFormat) -> ThriftFormat {
        ThriftFormat::new(
            self.transport.unwrap_or(format.transport),
            self.protocol.unwrap_or(format.protocol),
        )
    }
}

impl From<ThriftFormat> for FormatChoice {
    fn from(format: ThriftFormat) -> Self {
        Self {
            transport: Some(format.transport),
            protocol: Some(format.protocol),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_round_trip_and_default_is_none() {
        for transport in [Transport::Framed, Transport::Unframed, Transport::Header] {
            for protocol in [Protocol::Binary, Protocol::Compact] {
                let format = ThriftFormat::new(transport, protocol);
                assert_eq!(
                    ThriftFormat::from_variant(format.to_variant()),
                    Some(format)
                );
                assert_ne!(format.to_variant(), WireVariant::DEFAULT);
            }
        }
        assert_eq!(ThriftFormat::from_variant(WireVariant::DEFAULT), None);
        assert_eq!(ThriftFormat::from_variant(WireVariant(0x0403)), None);
    }
}
