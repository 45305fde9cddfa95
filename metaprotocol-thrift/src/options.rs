//! The thrift codec options: `codec: { transport: ..., protocol: ..., max_frame_bytes: ... }`.

use metaprotocol_core::{CodecOptions, OptionsError};

use crate::format::{FormatChoice, Protocol, Transport};

/// The option naming the transport: `auto` (default), `framed`, `unframed` or `header`.
pub const TRANSPORT: &str = "transport";
/// The option naming the protocol: `auto` (default), `binary` or `compact`.
pub const PROTOCOL_OPTION: &str = "protocol";

/// A listener's or cluster's thrift settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThriftOptions {
    /// On a listener, the only encoding accepted (open parts are detected per connection); on a
    /// cluster, the encoding requests travel upstream in (open parts follow the request).
    pub format: FormatChoice,
    /// The largest frame accepted.
    pub max_frame_bytes: usize,
}

impl Default for ThriftOptions {
    fn default() -> Self {
        Self {
            format: FormatChoice::default(),
            max_frame_bytes: metaprotocol_core::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

impl ThriftOptions {
    /// Reads the options, rejecting unknown ones and unknown values with the field's name.
    pub fn parse(options: &CodecOptions) -> Result<Self, OptionsError> {
        options.allow_only(&[TRANSPORT, PROTOCOL_OPTION])?;
        // Thrift lengths are i32 and the codec keeps frame offsets in u32s.
        if options.max_frame_bytes == 0 || options.max_frame_bytes > i32::MAX as usize {
            return Err(OptionsError::new(
                "max_frame_bytes",
                "must be between 1 and 2147483647 (Thrift lengths are i32)",
            ));
        }
        let transport = match options.get(TRANSPORT) {
            None | Some("auto") => None,
            Some("framed") => Some(Transport::Framed),
            Some("unframed") => Some(Transport::Unframed),
            Some("header") => Some(Transport::Header),
            Some(other) => {
                return Err(OptionsError::new(
                    TRANSPORT,
                    format!(
                        "unknown transport `{other}`; expected auto, framed, unframed or header"
                    ),
                ));
            }
        };
        let protocol = match options.get(PROTOCOL_OPTION) {
            None | Some("auto") => None,
            Some("binary") => Some(Protocol::Binary),
            Some("compact") => Some(Protocol::Compact),
            Some(other) => {
                return Err(OptionsError::new(
                    PROTOCOL_OPTION,
                    format!("unknown protocol `{other}`; expected auto, binary or compact"),
                ));
            }
        };
        Ok(Self {
            format: FormatChoice {
                transport,
                protocol,
            },
            max_frame_bytes: options.max_frame_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_names_the_bad_field() {
        let mut options = CodecOptions::default();
        options.insert(TRANSPORT, "header");
        options.insert(PROTOCOL_OPTION, "compact");
        let parsed = ThriftOptions::parse(&options);
        assert_eq!(
            parsed.map(|o| o.format),
            Ok(FormatChoice {
                transport: Some(Transport::Header),
                protocol: Some(Protocol::Compact),
            })
        );

        options.insert(PROTOCOL_OPTION, "json");
        assert_eq!(
            ThriftOptions::parse(&options).map_err(|e| e.field),
            Err(PROTOCOL_OPTION.to_owned())
        );

        let mut options = CodecOptions::default();
        options.insert(TRANSPORT, "buffered-ish");
        assert_eq!(
            ThriftOptions::parse(&options).map_err(|e| e.field),
            Err(TRANSPORT.to_owned())
        );

        let too_big = CodecOptions::with_max_frame_bytes(usize::MAX);
        assert_eq!(
            ThriftOptions::parse(&too_big).map_err(|e| e.field),
            Err("max_frame_bytes".to_owned())
        );

        let mut options = CodecOptions::default();
        options.insert("transprot", "framed");
        assert_eq!(
            ThriftOptions::parse(&options).map_err(|e| e.field),
            Err("transprot".to_owned())
        );
    }
}
