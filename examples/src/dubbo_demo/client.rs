//! A Dubbo client for the demo service. It is the engine's own [`Client`] pointed at one
//! address: every call shares one connection, multiplexed by request id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metaprotocol_core::{CodecFactory, Message, Metadata, ResponseStatus, Side, WireVariant};
use metaprotocol_router::config::ClusterTlsSpec;
use metaprotocol_router::{Client, ClientOptions, ConfigError, UpstreamError};

use metaprotocol_dubbo::build::{Call, request};

use super::{DEMO_SERVICE, DEMO_VERSION};

/// What a call got back.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The Dubbo status byte (20 = OK, 60 = service not found ...).
    pub dubbo_status: u8,
    /// The outcome as the engine classifies it.
    pub status: ResponseStatus,
    /// The response attachments.
    pub metadata: Metadata,
    /// The whole response frame.
    pub frame: Bytes,
    /// Round-trip time.
    pub latency: Duration,
}

impl Reply {
    /// The response attachment `key`.
    pub fn attachment(&self, key: &str) -> Option<&str> {
        self.metadata.get(key)
    }

    /// True if the body contains `text` (Hessian strings are UTF-8 on the wire).
    pub fn body_contains(&self, text: &str) -> bool {
        self.frame
            .windows(text.len().max(1))
            .any(|w| w == text.as_bytes())
    }
}

/// How long a call waits for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the demo service over one connection.
pub struct DubboClient {
    client: Client,
    codec: Arc<dyn CodecFactory>,
}

impl DubboClient {
    /// A client of `address` (connects on first call).
    pub fn new(address: SocketAddr) -> Self {
        let codec = codec();
        Self {
            client: Client::new(address, codec.clone(), ClientOptions::default()),
            codec,
        }
    }

    /// A client of `address` over TLS set up by `tls` (the server's CA, the client's
    /// certificate ...). Fails if a file of `tls` cannot be read.
    pub fn with_tls(address: SocketAddr, tls: &ClusterTlsSpec) -> Result<Self, ConfigError> {
        let codec = codec();
        Ok(Self {
            client: Client::with_tls(address, codec.clone(), ClientOptions::default(), tls)?,
            codec,
        })
    }

    /// Calls `method(arg)` of the demo service with `attachments` and waits for the answer.
    pub async fn call(
        &self,
        method: &str,
        arg: &str,
        attachments: &[(&str, &str)],
    ) -> Result<Reply, UpstreamError> {
        self.call_service(DEMO_SERVICE, method, arg, attachments)
            .await
    }

    /// Calls `method(arg)` of `service` with `attachments` and waits for the answer.
    pub async fn call_service(
        &self,
        service: &str,
        method: &str,
        arg: &str,
        attachments: &[(&str, &str)],
    ) -> Result<Reply, UpstreamError> {
        let request = self.message(request(
            0,
            true,
            &call(service, method, &[arg], attachments),
        ))?;
        let started = Instant::now();
        let response = self.client.call(request, CALL_TIMEOUT).await?;
        Ok(Reply {
            dubbo_status: response.frame.get(3).copied().unwrap_or(0),
            status: response.status,
            latency: started.elapsed(),
            metadata: response.metadata,
            frame: response.frame,
        })
    }

    /// Sends a one-way `method(arg)`.
    pub fn send_oneway(
        &self,
        method: &str,
        arg: &str,
        attachments: &[(&str, &str)],
    ) -> Result<(), UpstreamError> {
        let request = self.message(request(
            0,
            false,
            &call(DEMO_SERVICE, method, &[arg], attachments),
        ))?;
        self.client.send_oneway(request)
    }

    /// Connections open to the server.
    pub fn open_connections(&self) -> usize {
        self.client.open_connections()
    }

    fn message(&self, frame: Bytes) -> Result<Message, UpstreamError> {
        let mut decoder = self.codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
        match decoder.decode(&mut BytesMut::from(&frame[..])) {
            Ok(Some(message)) => Ok(message),
            Ok(None) => Err(UpstreamError::Encode(
                metaprotocol_core::CodecError::malformed("incomplete request frame"),
            )),
            Err(err) => Err(UpstreamError::Encode(err)),
        }
    }
}

/// The Dubbo codec the client speaks.
fn codec() -> Arc<dyn CodecFactory> {
    Arc::new(metaprotocol_dubbo::DubboCodecFactory::new(
        metaprotocol_core::DEFAULT_MAX_FRAME_BYTES,
    ))
}

/// A call of the demo service's version.
fn call<'a>(
    service: &'a str,
    method: &'a str,
    string_args: &'a [&'a str],
    attachments: &'a [(&'a str, &'a str)],
) -> Call<'a> {
    Call {
        service,
        version: DEMO_VERSION,
        method,
        string_args,
        attachments,
    }
}
