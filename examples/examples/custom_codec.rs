//! A new protocol in one file: a line-based RPC (`<id> <method> key=value ...\n`, answered with
//! `<id> OK <text>\n` or `<id> ERR <reason>\n`), registered as `line` and proxied by the engine.
//!
//! Run with `cargo run -p metaprotocol-examples --example custom_codec`.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use metaprotocol_core::{
    ByteStr, Codec, CodecError, CodecFactory, CodecOptions, CodecRegistry, EncodeParams,
    LocalReply, Message, MessageKind, OptionsError, ResponseStatus, Side, WireVariant,
};
use metaprotocol_router::{Config, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The protocol: one frame per line.
struct LineCodec {
    max_frame_bytes: usize,
}

impl Codec for LineCodec {
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        let Some(end) = src.iter().position(|b| *b == b'\n') else {
            if src.len() > self.max_frame_bytes {
                return Err(CodecError::FrameTooLarge {
                    size: src.len() as u64,
                    max: self.max_frame_bytes,
                });
            }
            return Ok(None);
        };
        let frame = src.split_to(end + 1).freeze();
        let line =
            std::str::from_utf8(&frame[..end]).map_err(|_| CodecError::malformed("not UTF-8"))?;
        let mut words = line.split(' ');
        let id = words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or(CodecError::malformed("no request id"))?;
        let second = words.next().ok_or(CodecError::malformed("empty frame"))?;
        let kind = if second == "OK" || second == "ERR" {
            MessageKind::Response
        } else {
            MessageKind::Request
        };
        let mut message = Message::new(kind, id, frame.clone());
        if second == "ERR" {
            message.status = ResponseStatus::ServerError;
        }
        if kind == MessageKind::Request {
            // Metadata values are slices of the frame, kept as spans of it: no copies. Keys
            // known in advance are `'static` strings.
            let method = frame.slice_ref(second.as_bytes());
            message.metadata.insert(
                "method",
                ByteStr::from_utf8(method).map_err(|_| CodecError::malformed("method"))?,
            );
            for pair in words {
                if let Some((k, v)) = pair.split_once('=') {
                    let key = ByteStr::from_utf8(frame.slice_ref(k.as_bytes()));
                    let value = ByteStr::from_utf8(frame.slice_ref(v.as_bytes()));
                    if let (Ok(key), Ok(value)) = (key, value) {
                        message.metadata.insert(key, value);
                    }
                }
            }
        }
        Ok(Some(message))
    }

    fn encode(
        &mut self,
        message: &Message,
        params: &EncodeParams<'_>,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        // The id is the first word; everything after it is forwarded as it came, plus any
        // headers the mutation sets (this toy protocol cannot remove one).
        let rest = message
            .frame
            .iter()
            .position(|b| *b == b' ')
            .and_then(|space| message.frame.get(space..message.frame.len() - 1))
            .ok_or(CodecError::malformed("frame without a body"))?;
        dst.put_slice(params.request_id.to_string().as_bytes());
        dst.put_slice(rest);
        for (k, v) in params.mutation.sets() {
            dst.put_slice(format!(" {k}={v}").as_bytes());
        }
        dst.put_u8(b'\n');
        Ok(())
    }

    fn encode_local_reply(
        &mut self,
        request: &Message,
        reply: &LocalReply,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let message = reply.message.replace('\n', " ");
        dst.put_slice(format!("{} ERR {}: {message}\n", request.request_id, reply.kind).as_bytes());
        Ok(())
    }

    fn encode_heartbeat_reply(&mut self, _: &Message, _: &mut BytesMut) -> Result<(), CodecError> {
        Ok(())
    }
}

struct LineCodecFactory {
    max_frame_bytes: usize,
}

impl CodecFactory for LineCodecFactory {
    fn protocol(&self) -> &'static str {
        "line"
    }

    fn new_codec(&self, _: Side, _: WireVariant) -> Box<dyn Codec> {
        Box::new(LineCodec {
            max_frame_bytes: self.max_frame_bytes,
        })
    }
}

fn line_factory(options: &CodecOptions) -> Result<Arc<dyn CodecFactory>, OptionsError> {
    options.allow_only(&[])?;
    Ok(Arc::new(LineCodecFactory {
        max_frame_bytes: options.max_frame_bytes,
    }))
}

/// A server of the line protocol: answers `<id> OK hello from <name> (<headers>)`.
async fn serve_line(listener: TcpListener, name: &'static str) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (id, rest) = line.split_once(' ').unwrap_or((&line, ""));
                let answer = format!("{id} OK hello from {name} ({rest})\n");
                if write.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TcpListener::bind("127.0.0.1:0").await?;
    let server_address = server.local_addr()?;
    tokio::spawn(serve_line(server, "line-server"));

    let mut codecs = CodecRegistry::new();
    codecs.register("line", line_factory);
    let config = Config::from_yaml(&format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: line, route_config: r }} ]
route_configs:
  - name: r
    routes:
      - match: {{ metadata: [ {{ key: method, exact: greet }} ] }}
        route: {{ cluster: lines }}
        request_mutation: {{ set: {{ via: metaprotocol }} }}
clusters: [ {{ name: lines, endpoints: [ {{ address: {server_address} }} ] }} ]
"
    ))?;
    let proxy = Proxy::start(config, codecs).await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;

    let stream = TcpStream::connect(address).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"7 greet user=ada\n42 dance\n").await?;
    let mut lines = BufReader::new(read).lines();
    for _ in 0..2 {
        if let Some(line) = lines.next_line().await? {
            println!("{line}");
        }
    }
    proxy.shutdown().await;
    Ok(())
}
