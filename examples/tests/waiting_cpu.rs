//! A connection that waits costs no CPU. The test is alone in its binary (a crate of its own),
//! so that the process's CPU time is the engine's, the client's and the upstream's, all of which
//! only wait here.

#[allow(dead_code)]
mod support;

use std::time::Duration;

use support::TestResult;
use support::proxy::{listener_addr, start_engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// This process's CPU time so far (user and system), in clock ticks (`/proc/self/stat`).
fn cpu_ticks() -> TestResult<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command name, which may hold spaces, in parentheses.
    let (_, fields) = stat
        .rsplit_once(')')
        .ok_or("no command name in /proc/self/stat")?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let field = |n: usize| -> TestResult<u64> {
        Ok(fields.get(n).ok_or("/proc/self/stat is short")?.parse()?)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(field(11)? + field(12)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_off_by_its_frame_timeout_waits_for_its_calls_without_spinning()
-> TestResult {
    // An upstream that reads its calls and never answers.
    let upstream = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let proxy = start_engine(&format!(
        r#"
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r, frame_timeout: 300ms }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }}, timeout: 3s }} ] }}
clusters:
  - {{ name: c, endpoints: [ {{ address: "{upstream_addr}" }} ] }}
"#
    ))
    .await?;
    let mut client = TcpStream::connect(listener_addr(&proxy, "in")?).await?;
    // A whole call, then half of the next one's header and nothing more: the frame timeout stops
    // reading while the call is still in flight.
    client
        .write_all(&support::dubbo_request(1, "sayHello", &[]))
        .await?;
    client
        .write_all(&[0xda, 0xbb, 0xc2, 0x00, 0, 0, 0, 0])
        .await?;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Past the frame timeout, everything waits: for the call's own timeout, 2 s away.
    let before = cpu_ticks()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = cpu_ticks()? - before;
    // Spinning, the connection's task took a whole core (about 100 ticks a second, more with
    // two); waiting, next to none.
    assert!(spent < 30, "{spent} ticks of CPU in 1 s of waiting");

    // The call still gets its one answer, at its timeout, and the connection then closes.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer)).await??;
    assert!(answer.len() > 16, "no answer: {answer:?}");
    assert_eq!(&answer[4..12], &1u64.to_be_bytes(), "the call's id");
    assert_eq!(answer[3], 31, "a timeout (Dubbo's SERVER_TIMEOUT)");
    proxy.shutdown().await;
    Ok(())
}
