//! An upstream with one answer over the proxy's frame limit, for the tests that the proxy passes
//! over such an answer and fails its call alone, whatever the protocol.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use metaprotocol_core::Codec;
use metaprotocol_router::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::TestResult;
use super::proxy::metric;

/// The size of the big answer: over the 16 KiB `max_frame_bytes` the tests give their cluster.
pub const BIG: usize = 64 << 10;

/// Starts an upstream on 127.0.0.1 that reads calls with the codecs `codec` makes until one
/// connection has brought a call to each of `methods` (`[big, small]`, by their `method`), then
/// answers the big one with `answer(id, BIG bytes)`, written in pieces, and the small one with
/// `answer(id, b"fits")`, on that connection, and keeps it open (a closed connection would fail
/// the calls as well).
pub async fn start_upstream(
    codec: impl Fn() -> Box<dyn Codec> + Send + Sync + 'static,
    methods: [&'static str; 2],
    answer: impl Fn(u64, &[u8]) -> TestResult<BytesMut> + Send + Sync + 'static,
) -> TestResult<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let answer = std::sync::Arc::new(answer);
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (mut codec, answer) = (codec(), answer.clone());
            tokio::spawn(async move {
                let (mut buf, mut ids) = (BytesMut::new(), BTreeMap::new());
                while ids.len() < 2 && socket.read_buf(&mut buf).await? > 0 {
                    while let Some(request) = codec.decode(&mut buf)? {
                        let method = request.metadata.get("method").unwrap_or_default();
                        ids.insert(method.to_owned(), request.request_id);
                    }
                }
                let [big, small] = methods;
                let (Some(&big), Some(&small)) = (ids.get(big), ids.get(small)) else {
                    return Ok(());
                };
                for piece in answer(big, &[b'x'; BIG])?.chunks(20_000) {
                    socket.write_all(piece).await?;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                socket.write_all(&answer(small, b"fits")?).await?;
                let _ = socket.read_buf(&mut buf).await;
                TestResult::Ok(())
            });
        }
    });
    Ok((address, server))
}

/// Checks that `proxy` passed over one answer of cluster `c` and closed no upstream connection
/// for a bad stream.
pub fn assert_one_answer_passed_over(proxy: &Proxy) {
    assert_eq!(
        metric(
            proxy,
            "metaprotocol_upstream_cx_protocol_errors_total{cluster=\"c\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            proxy,
            "metaprotocol_upstream_rq_failures_total{cluster=\"c\",origin=\"upstream\",reason=\"response_too_large\"}"
        ),
        1.0
    );
}
