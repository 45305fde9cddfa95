//! Criterion bench of the script filters' cost per request: one request's whole walk through a
//! filter chain (`on_request`, `on_response`, `on_complete`) with the example filter logic
//! (`examples/filters/tenant.lua`, `examples/wasm-filter`) as Lua, as WebAssembly, and as the
//! same logic in Rust for reference.
//!
//! The WebAssembly filter is the committed build of `examples/wasm-filter`
//! (`scripts/build-wasm-filter.sh` rebuilds it).
//!
//! `cargo bench -p metaprotocol-benches --bench script_filters`

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_core::{
    ByteStr, CompleteContext, ConnectionInfo, FilterChain, FilterDecision, L7Filter, LocalReply,
    LocalReplyKind, Message, MessageKind, Mutation, RequestContext, RequestRecord, ResponseContext,
};
use metaprotocol_router::{FilterContext, FilterRegistry, Metrics, SharedClients};
use std::net::SocketAddr;
use std::sync::Arc;

/// The example filter logic in Rust: what the scripts cost is measured against it.
struct NativeTenant;

/// The tenant kept from request to response.
struct Tenant(ByteStr);

impl L7Filter for NativeTenant {
    fn name(&self) -> &str {
        "native"
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        let Some(tenant) = ctx.request.metadata.get_shared("tenant") else {
            return FilterDecision::Reply(LocalReply::new(
                LocalReplyKind::Unauthorized,
                "a tenant is required",
            ));
        };
        ctx.mutation.set(
            ByteStr::from_static("x-filtered-by"),
            format!("native:{tenant}").into(),
        );
        if let Some(lane) = ctx.request.metadata.get_shared("x-lane") {
            ctx.record
                .set_routing_key(ByteStr::from_static("lane"), lane);
        }
        ctx.record.extensions.insert(Tenant(tenant));
        FilterDecision::Continue
    }

    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        if let Some(Tenant(tenant)) = ctx.record.extensions.get::<Tenant>() {
            ctx.mutation
                .set(ByteStr::from_static("x-tenant-echo"), tenant.clone());
        }
        FilterDecision::Continue
    }
}

fn chain(name: &str, config: serde_json::Value) -> FilterChain {
    let metrics = Metrics::new();
    let context = FilterContext::new(
        "bench".into(),
        metrics.root().with_label("filter", name),
        SharedClients::default(),
    );
    let filter = FilterRegistry::with_builtins()
        .build(name, &config, &context)
        .unwrap_or_else(|err| panic!("cannot build the {name} filter: {err}"));
    FilterChain::new(vec![filter])
}

/// One request's walk: request hooks, response hooks, completion.
fn walk(
    chain: &FilterChain,
    request: &Message,
    response: &Message,
    connection: &Arc<ConnectionInfo>,
) {
    let mut record = RequestRecord::new(connection.clone(), 100);
    let mut mutation = Mutation::new();
    let step = chain.run_request(
        0,
        &mut RequestContext {
            request,
            mutation: &mut mutation,
            record: &mut record,
        },
    );
    assert!(
        matches!(step, metaprotocol_core::ChainStep::Done),
        "{step:?}"
    );
    let mut response_mutation = Mutation::new();
    chain.run_response(
        0,
        &mut ResponseContext {
            request,
            response,
            mutation: &mut response_mutation,
            record: &mut record,
        },
    );
    chain.complete(&CompleteContext {
        request,
        response: Some(response),
        record: &record,
    });
}

fn script_filters(c: &mut Criterion) {
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm-filter/metaprotocol_wasm_filter_example.wasm");
    let chains = [
        ("native", FilterChain::new(vec![Arc::new(NativeTenant)])),
        (
            "lua",
            chain(
                "lua",
                serde_json::json!({
                    "source": include_str!("../../examples/filters/tenant.lua"),
                    "counters": ["fast_lane"],
                    "instances": 1,
                }),
            ),
        ),
        (
            "wasm",
            chain(
                "wasm",
                serde_json::json!({ "path": wasm, "counters": ["fast_lane"], "instances": 1 }),
            ),
        ),
    ];
    let mut request = Message::new(MessageKind::Request, 1, Bytes::new());
    for (k, v) in [
        (
            "interface",
            "org.apache.dubbo.samples.basic.api.DemoService",
        ),
        ("method", "sayHello"),
        ("tenant", "t1"),
        ("x-lane", "fast"),
    ] {
        request
            .metadata
            .insert(ByteStr::from_static(k), ByteStr::from_static(v));
    }
    let response = Message::new(MessageKind::Response, 1, Bytes::new());
    let addr = SocketAddr::from(([127, 0, 0, 1], 20880));
    let connection = Arc::new(ConnectionInfo::new("bench".into(), addr, addr));
    let mut group = c.benchmark_group("script_filters/request");
    group.throughput(Throughput::Elements(1));
    for (name, chain) in &chains {
        group.bench_function(*name, |b| {
            b.iter(|| walk(chain, &request, &response, &connection));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = metaprotocol_benches::short_criterion();
    targets = script_filters
}
criterion_main!(benches);
