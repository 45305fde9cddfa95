//! Criterion bench of the built-in policy filters: the cost of one request hook of each, on a
//! Dubbo-like request (interface, method, version, two attachments) from a client with a SPIFFE
//! identity, as the engine calls it (no sockets).
//!
//! - `local_ratelimit`: a request taking a token (after a conditional bucket's rule missed),
//!   and one refused.
//! - `fault`: a request the rule does not match, and one matched but not chosen.
//! - `rbac`: an allow filter of three policies, the last of which matches by principal and
//!   method; and one whose policies all miss (denied).
//! - `global_ratelimit`: the hook alone (the Redis key, the check's command, the boxed wait),
//!   and, when `redis-server` is installed, the whole check: the hook and its wait for a real
//!   Redis on loopback (one request at a time: a round trip).
//!
//! `cargo bench -p metaprotocol-benches --bench policy_filters`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_benches::redis::Redis;
use metaprotocol_core::{
    ByteStr, ConnectionInfo, FilterDecision, L7Filter, Message, MessageKind, Mutation,
    PeerIdentity, RequestContext, RequestRecord,
};
use metaprotocol_router::{FilterContext, FilterRegistry, Metrics};
use serde_json::json;

const READER: &str = "spiffe://cluster.local/ns/default/sa/reader";

/// A filter built as the engine builds it.
fn filter(name: &str, config: serde_json::Value) -> Arc<dyn L7Filter> {
    let metrics = Metrics::new();
    let context = FilterContext::standalone("in", name, &metrics);
    FilterRegistry::with_builtins()
        .build(name, &config, &context)
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// A request to `method` and its record.
fn request(method: &str) -> (Message, RequestRecord) {
    let mut message = Message::new(MessageKind::Request, 1, Bytes::new());
    for (key, value) in [
        (
            "interface",
            "org.apache.dubbo.samples.basic.api.DemoService",
        ),
        ("method", method),
        ("version", "1.0.0"),
        ("tenant", "t1"),
        ("x-trace-id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ] {
        message
            .metadata
            .insert(ByteStr::from_static(key), ByteStr::copy_from_str(value));
    }
    let address = SocketAddr::from(([127, 0, 0, 1], 40000));
    let connection = ConnectionInfo {
        peer_identity: Some(Arc::new(PeerIdentity {
            uri_sans: vec![READER.to_owned()],
            ..PeerIdentity::default()
        })),
        ..ConnectionInfo::new("in".into(), address, address)
    };
    (message, RequestRecord::new(Arc::new(connection), 0))
}

/// Runs `filter`'s request hook once on `message`.
fn hook(filter: &dyn L7Filter, message: &Message, record: &mut RequestRecord) -> FilterDecision {
    filter.on_request(&mut RequestContext {
        request: message,
        mutation: &mut Mutation::new(),
        record,
    })
}

/// Times `filter`'s hook on a request to `method` as `name`.
fn bench_hook(c: &mut Criterion, group: &str, name: &str, filter: &dyn L7Filter, method: &str) {
    let (message, mut record) = request(method);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.iter(|| std::hint::black_box(hook(filter, &message, &mut record)))
    });
    group.finish();
}

fn local_ratelimit(c: &mut Criterion) {
    let config = |max_tokens: u64| {
        json!({
            "token_bucket": { "max_tokens": max_tokens, "tokens_per_fill": max_tokens, "fill_interval": "1h" },
            "conditions": [ { "match": { "metadata": [ { "key": "method", "exact": "sayGoodbye" } ] },
                              "token_bucket": { "max_tokens": 10, "fill_interval": "1s" } } ]
        })
    };
    let ok = filter("local_ratelimit", config(u64::from(u32::MAX)));
    bench_hook(c, "local_ratelimit", "ok", &*ok, "sayHello");
    let limited = filter("local_ratelimit", config(1));
    bench_hook(c, "local_ratelimit", "over_limit", &*limited, "sayHello");
}

fn fault(c: &mut Criterion) {
    let fault = filter(
        "fault",
        json!({ "match": { "metadata": [ { "key": "method", "exact": "sayHello" } ] },
                "delay": { "fixed_delay": "100ms", "percentage": 0 },
                "abort": { "kind": "unavailable", "percentage": 0 } }),
    );
    bench_hook(c, "fault", "not_matched", &*fault, "sayGoodbye");
    bench_hook(c, "fault", "matched_not_chosen", &*fault, "sayHello");
}

fn rbac(c: &mut Criterion) {
    let rbac = filter(
        "rbac",
        json!({ "action": "allow", "policies": [
            { "name": "operators", "principals": [ "spiffe://cluster.local/ns/ops/*" ] },
            { "name": "office", "source_ips": [ "10.0.0.0/8", "192.168.0.0/16" ] },
            { "name": "readers", "principals": [ READER ],
              "metadata": [ { "key": "interface", "prefix": "org.apache.dubbo." },
                            { "key": "method", "regex": "say(Hello|Goodbye)" } ] } ] }),
    );
    bench_hook(c, "rbac", "allowed_by_third_policy", &*rbac, "sayHello");
    bench_hook(c, "rbac", "denied", &*rbac, "delete");
}

fn global_ratelimit(c: &mut Criterion) {
    let redis = Redis::start();
    let address = redis
        .as_ref()
        .map_or_else(|| "127.0.0.1:1".to_owned(), |r| r.address().to_string());
    let global = filter(
        "global_ratelimit",
        json!({ "redis": { "address": address }, "domain": "bench",
                "descriptors": [ "interface", "method" ],
                "limit": { "requests": 1_000_000, "per": "1s" }, "timeout": "1s" }),
    );
    bench_hook(c, "global_ratelimit", "hook", &*global, "sayHello");
    if redis.is_none() {
        println!("global_ratelimit/redis_round_trip: skipped, redis-server is not installed");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("no runtime: {err}"));
    let (message, mut record) = request("sayHello");
    let mut group = c.benchmark_group("global_ratelimit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("redis_round_trip", |b| {
        b.iter(|| {
            let decision = hook(&*global, &message, &mut record);
            let FilterDecision::Wait(check) = decision else {
                panic!("the global rate limit did not wait: {decision:?}");
            };
            let resume = runtime.block_on(check);
            assert!(matches!(resume.decision, FilterDecision::Continue));
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short: the machine is small and shared; the figures are compared run against run.
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = local_ratelimit, fault, rbac, global_ratelimit
}
criterion_main!(benches);
