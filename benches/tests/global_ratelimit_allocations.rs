//! The heap allocations of one `global_ratelimit` check against a real redis-server (skipped
//! when it is not installed), counted by the counting allocator: the filter's hook and its
//! wait, the Redis client's work (the command, its answer) included, on one thread. Apart from
//! `allocations.rs`, whose test counts the engine's threads: each test binary counts alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metaprotocol_benches::alloc::{CountingAlloc, Counts};
use metaprotocol_benches::redis::Redis;
use metaprotocol_core::{
    ByteStr, ConnectionInfo, FilterDecision, Message, MessageKind, Mutation, RequestContext,
    RequestRecord,
};
use metaprotocol_router::{FilterContext, FilterRegistry, Metrics};
use serde_json::json;

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Checks counted, after as many to warm up (the connection made, the script loaded).
const CHECKS: u64 = 1_000;

/// The most allocations one check may make, rounded up (measured: 5: the filter's boxed wait,
/// and in redis-rs the command's packed copy, the answer's channel, the answer, and the parser's
/// error at the end of what it read; 7 when each check's command had buffers of its own, 15
/// when the key had one too and the command was built from the script invocation's copies).
const MAX_PER_CHECK: u64 = 6;

#[test]
fn a_global_ratelimit_check_allocates_a_handful() -> TestResult {
    let Some(redis) = Redis::start() else {
        println!("skipped: redis-server is not installed");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = Metrics::new();
    let context = FilterContext::standalone("in", "global_ratelimit", &metrics);
    let config = json!({ "redis": { "address": redis.address().to_string() },
        "domain": "alloc", "descriptors": [ "method" ],
        "limit": { "requests": 1_000_000, "per": "1s" }, "timeout": "1s" });
    let filter = FilterRegistry::with_builtins().build("global_ratelimit", &config, &context)?;
    let mut message = Message::new(MessageKind::Request, 1, Bytes::new());
    message.metadata.insert(
        ByteStr::from_static("method"),
        ByteStr::from_static("sayHello"),
    );
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    let connection = ConnectionInfo::new("in".into(), address, address);
    let mut record = RequestRecord::new(Arc::new(connection), 0);
    let mut check = || -> TestResult {
        let decision = filter.on_request(&mut RequestContext {
            request: &message,
            mutation: &mut Mutation::new(),
            record: &mut record,
        });
        let FilterDecision::Wait(wait) = decision else {
            return Err(format!("the check did not wait: {decision:?}").into());
        };
        let resumed =
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), wait).await })?;
        match resumed.decision {
            FilterDecision::Continue => Ok(()),
            other => Err(format!("the check did not let the call through: {other:?}").into()),
        }
    };
    for _ in 0..CHECKS {
        check()?;
    }
    let before = Counts::now();
    for _ in 0..CHECKS {
        check()?;
    }
    let counted = Counts::now().since(before);
    let per_check = counted.all.div_ceil(CHECKS);
    println!(
        "{per_check} allocations per check ({} and {} reallocations in {CHECKS})",
        counted.all, counted.all_reallocs
    );
    assert!(
        per_check <= MAX_PER_CHECK,
        "{per_check} allocations per check"
    );
    Ok(())
}
