//! A stand-in OTLP/gRPC collector: it takes every export and answers success without decoding
//! it, so that tracing's figures include building, queueing and exporting every span. (With a
//! collector that is not there, each export waits for its timeout and the full queue drops
//! nearly every span unbuilt: the figures would measure dropping.)

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::{TcpListener, TcpStream};

/// An empty gRPC message (uncompressed, 0 bytes): an `ExportTraceServiceResponse` with nothing
/// rejected.
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

/// A running collector, on a thread and runtime of its own; it runs until the process ends.
#[derive(Debug)]
pub struct NullCollector {
    address: SocketAddr,
}

impl NullCollector {
    /// Starts a collector on a free port of 127.0.0.1.
    pub fn start() -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("collector".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    while let Ok((socket, _)) = listener.accept().await {
                        tokio::spawn(serve(socket));
                    }
                });
            })?;
        Ok(Self { address })
    }

    /// The endpoint to configure: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// Answers every export of one connection.
async fn serve(socket: TcpStream) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        tokio::spawn(async move {
            let mut body = request.into_body();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let mut response = Response::new(());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            let Ok(mut stream) = respond.send_response(response, false) else {
                return;
            };
            let _ = stream.send_data(Bytes::from_static(EMPTY_MESSAGE), false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = stream.send_trailers(trailers);
        });
    }
}
