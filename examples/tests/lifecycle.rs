//! Every way a call can end, end to end with Dubbo: the upstream answers, closes before or after
//! reading the request, closes half-way through its answer, answers with an unknown id, twice,
//! or too late; the client closes before, during or after its call; one-way and two-way calls
//! mixed. Each call ends with the right reply or close, the counters say what happened, and
//! nothing stays in flight.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use metaprotocol_core::{CodecFactory, MessageKind, Side, WireVariant, keys};
use metaprotocol_dubbo::build::{Call, request, value_response};
use metaprotocol_examples::dubbo_demo::{DEMO_SERVICE, DEMO_VERSION, DubboClient};
use metaprotocol_router::{Config, Proxy};
use support::TestResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A Dubbo server whose behaviour each call's method chooses:
/// - `answer`: answers;
/// - `vanish`: closes the connection without answering;
/// - `half`: writes half of its answer, then closes;
/// - `stranger`: answers with an id no request has;
/// - `twice`: answers twice;
/// - `late`: answers after 600 ms;
/// - anything else one-way: nothing.
async fn fault_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let codec = Arc::new(metaprotocol_dubbo::DubboCodecFactory::new(
        metaprotocol_core::DEFAULT_MAX_FRAME_BYTES,
    ));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, codec.clone()));
        }
    });
    Ok(address)
}

async fn serve(socket: TcpStream, codec: Arc<metaprotocol_dubbo::DubboCodecFactory>) {
    let mut decoder = codec.new_codec(Side::Downstream, WireVariant::DEFAULT);
    let (mut reader, writer) = socket.into_split();
    // Answers go through one writer, so that a late answer does not hold up the others.
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut buf = BytesMut::new();
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Ok(Some(message)) = decoder.decode(&mut buf) {
            if message.kind != MessageKind::Request {
                continue;
            }
            let id = message.request_id;
            let method = message
                .metadata
                .get(keys::METHOD)
                .map(|m| m.to_string())
                .unwrap_or_default();
            let answer = value_response(id, "done", &[]);
            let mut socket = writer.lock().await;
            let wrote = match method.as_str() {
                "vanish" => return,
                "half" => {
                    let _ = socket.write_all(&answer[..answer.len() / 2]).await;
                    return;
                }
                "stranger" => {
                    socket
                        .write_all(&value_response(id + 1000, "who", &[]))
                        .await
                }
                "twice" => {
                    let _ = socket.write_all(&answer).await;
                    socket.write_all(&answer).await
                }
                "late" => {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        let _ = writer.lock().await.write_all(&answer).await;
                    });
                    Ok(())
                }
                _ => socket.write_all(&answer).await,
            };
            if wrote.is_err() {
                return;
            }
        }
    }
}

struct World {
    proxy: Proxy,
    client: DubboClient,
    address: SocketAddr,
}

impl World {
    async fn start() -> TestResult<Self> {
        let upstream = fault_server().await?;
        let yaml = format!(
            "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 300ms }} ] }} ]
clusters: [ {{ name: c, connections_per_endpoint: 1, endpoints: [ {{ address: {upstream} }} ] }} ]
"
        );
        let proxy = Proxy::start(
            Config::from_yaml(&yaml)?,
            metaprotocol_examples::codec_registry(),
        )
        .await?;
        let address = proxy.listener_addr("in").ok_or("no listener")?;
        Ok(Self {
            client: DubboClient::new(address),
            proxy,
            address,
        })
    }

    async fn status(&self, method: &str) -> TestResult<u8> {
        Ok(self.client.call(method, "a", &[]).await?.dubbo_status)
    }

    fn metric(&self, series: &str) -> u64 {
        self.proxy
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (up to 20 s) until the counter `series` is `value`.
    async fn until_metric(&self, series: &str, value: u64) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(series) != value {
            if Instant::now() > deadline {
                return Err(format!("{series} is {}, not {value}", self.metric(series)).into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Waits (up to 20 s) until nothing is in flight on either side.
    async fn settled(&self) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let downstream = self.metric("metaprotocol_downstream_rq_active{listener=\"in\"}");
            let upstream = self.metric("metaprotocol_upstream_rq_active{cluster=\"c\"}");
            let total = self.metric("metaprotocol_requests_in_flight");
            if downstream == 0 && upstream == 0 && total == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "still in flight: {downstream} downstream, {upstream} upstream, {total} in all"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn call_frame(id: u64, two_way: bool, method: &str) -> bytes::Bytes {
    request(
        id,
        two_way,
        &Call {
            service: DEMO_SERVICE,
            version: DEMO_VERSION,
            method,
            string_args: &["a"],
            attachments: &[],
        },
    )
}

#[tokio::test]
async fn the_upstream_closing_in_each_phase_fails_only_the_calls_it_holds() -> TestResult {
    let world = World::start().await?;
    assert_eq!(world.status("answer").await?, 20);
    assert_eq!(
        world.status("vanish").await?,
        80,
        "closed after reading the request"
    );
    assert_eq!(
        world.status("half").await?,
        80,
        "closed half-way through the answer"
    );
    assert_eq!(
        world.status("answer").await?,
        20,
        "a new connection serves again"
    );
    world.settled().await?;
    assert_eq!(
        world.metric(
            "metaprotocol_upstream_rq_failures_total{cluster=\"c\",origin=\"upstream\",reason=\"reset_after_send\"}"
        ),
        2
    );
    assert_eq!(
        world.metric("metaprotocol_upstream_cx_total{cluster=\"c\"}"),
        3
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_duplicate_and_late_answers_are_counted_and_dropped() -> TestResult {
    let world = World::start().await?;
    assert_eq!(
        world.status("stranger").await?,
        31,
        "an unknown id answers nothing: timeout"
    );
    assert_eq!(world.status("twice").await?, 20, "the first of two answers");
    assert_eq!(world.status("late").await?, 31, "too late: timeout");
    // The late answer arrives on the connection before the next call.
    world
        .until_metric(
            "metaprotocol_upstream_unmatched_responses_total{cluster=\"c\"}",
            3,
        )
        .await?;
    assert_eq!(
        world.status("answer").await?,
        20,
        "the connection is still good"
    );
    world.settled().await?;
    assert_eq!(
        world.metric("metaprotocol_upstream_unmatched_responses_total{cluster=\"c\"}"),
        3,
        "the stranger, the second answer, the late one"
    );
    assert_eq!(
        world.metric("metaprotocol_upstream_cx_total{cluster=\"c\"}"),
        1
    );
    world.proxy.shutdown().await;
    Ok(())
}

/// Reads one answer from `socket`: its request id and its status.
async fn read_answer(socket: &mut TcpStream) -> std::io::Result<(u64, u8)> {
    let mut header = [0u8; 16];
    socket.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
    let mut body = vec![0u8; len as usize];
    socket.read_exact(&mut body).await?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&header[4..12]);
    Ok((u64::from_be_bytes(id), header[3]))
}

#[tokio::test]
async fn one_way_and_two_way_calls_mixed_on_one_connection() -> TestResult {
    let world = World::start().await?;
    let mut socket = TcpStream::connect(world.address).await?;
    let mut frames = Vec::new();
    for id in 0..50u64 {
        frames.extend_from_slice(&call_frame(id, id % 2 == 0, "answer"));
    }
    socket.write_all(&frames).await?;
    let mut answered = Vec::new();
    let read = async {
        while answered.len() < 25 {
            answered.push(read_answer(&mut socket).await?);
        }
        TestResult::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), read).await??;
    answered.sort();
    let expected: Vec<(u64, u8)> = (0..50).step_by(2).map(|id| (id, 20)).collect();
    assert_eq!(
        answered, expected,
        "every two-way call answered with its own id, once"
    );
    world.settled().await?;
    assert_eq!(
        world.metric("metaprotocol_downstream_rq_oneway_total{listener=\"in\"}"),
        25
    );
    world.proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_closing_before_during_or_after_its_call_leaves_nothing_in_flight() -> TestResult {
    let world = World::start().await?;
    // Before: the request and the close arrive together.
    let mut before = TcpStream::connect(world.address).await?;
    before.write_all(&call_frame(1, true, "answer")).await?;
    drop(before);
    // During: gone while the upstream takes its time.
    let mut during = TcpStream::connect(world.address).await?;
    during.write_all(&call_frame(2, true, "late")).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(during);
    // After: the answer read, then the close.
    let mut after = TcpStream::connect(world.address).await?;
    after.write_all(&call_frame(3, true, "answer")).await?;
    let mut header = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(20), after.read_exact(&mut header)).await??;
    assert_eq!(header[3], 20);
    drop(after);
    world.settled().await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.metric("metaprotocol_downstream_cx_active{listener=\"in\"}") != 0 {
        assert!(Instant::now() < deadline, "client connections stayed open");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(world.status("answer").await?, 20, "the proxy still serves");
    world.proxy.shutdown().await;
    Ok(())
}

/// A server that accepts, never reads, and resets every connection after `after`: requests
/// queued behind its full buffers were never written when it goes.
async fn stalling_then_resetting_server(after: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = socket.set_zero_linger();
                drop(socket);
            });
        }
    });
    Ok(address)
}

#[tokio::test]
async fn calls_a_failed_connection_never_wrote_are_resent_elsewhere() -> TestResult {
    let stalling = stalling_then_resetting_server(Duration::from_millis(500)).await?;
    let good = fault_server().await?;
    let yaml = format!(
        "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 5s }} ] }} ]
clusters: [ {{ name: c, connections_per_endpoint: 1, endpoints: [ {{ address: {stalling} }}, {{ address: {good} }} ] }} ]
"
    );
    let proxy = Proxy::start(
        Config::from_yaml(&yaml)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let address = proxy.listener_addr("in").ok_or("no listener")?;
    // 1 MiB calls: the stalled connection's socket buffers fill, and later calls wait in its
    // queue, never written. The call is encoded once and sent by each client as it is: encoded
    // by each, 30 times, it took this test's one thread most of its time, and with the machine
    // loaded, clients' calls waited more than their 30 s for the others' to be encoded.
    let big = "b".repeat(1024 * 1024);
    let frame = request(
        1,
        true,
        &Call {
            service: DEMO_SERVICE,
            version: DEMO_VERSION,
            method: "answer",
            string_args: &[&big],
            attachments: &[],
        },
    );
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let frame = frame.clone();
        calls.spawn(async move {
            let mut socket = TcpStream::connect(address).await?;
            tokio::time::timeout(Duration::from_secs(20), socket.write_all(&frame)).await??;
            // Answered within the route's 5 s: by the upstream, or with a failure.
            let (_, status) =
                tokio::time::timeout(Duration::from_secs(20), read_answer(&mut socket)).await??;
            TestResult::Ok(status)
        });
    }
    let (mut served, mut failed) = (0, 0);
    while let Some(joined) = calls.join_next().await {
        match joined?? {
            20 => served += 1,
            _ => failed += 1,
        }
    }
    let metrics = proxy.metrics().render();
    let resent = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("metaprotocol_upstream_rq_retry_total{cluster=\"c\"} ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert!(resent > 0, "no call was resent: {metrics}");
    assert!(
        served >= resent as usize,
        "every resent call was served: {served} served, {failed} failed, {resent} resent"
    );
    let unsent = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("metaprotocol_upstream_rq_failures_total{cluster=\"c\",origin=\"upstream\",reason=\"reset_before_send\"} ")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    assert_eq!(
        unsent, resent,
        "the resent calls are those the connection never wrote"
    );
    proxy.shutdown().await;
    Ok(())
}
