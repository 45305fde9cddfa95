//! Criterion bench of route matching: tables of 10, 100, 1,000 and 10,000 routes, each matching
//! two metadata keys exactly (`interface` and `method`, one method per route, as a table routing
//! each method of a service apart), asked for the first route, the middle one and the last, as
//! the engine compiles and asks them (through `RouteCheck`, whose answer names the route and its
//! cluster: a constant few allocations on top of the match).
//!
//! `cargo bench -p metaprotocol-benches --bench route_match`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use metaprotocol_core::{ByteStr, CodecRegistry, Metadata, RoutingKeys, RoutingView};
use metaprotocol_router::{Config, Proxy, RouteCheck};

const SERVICE: &str = "org.apache.dubbo.samples.DemoService";

/// The compiled tables of a config whose listener routes `routes` methods apart.
fn table(routes: usize) -> RouteCheck {
    let mut yaml = String::from(
        "listeners:\n  - { name: front, address: 127.0.0.1:0, protocol: dubbo, route_config: r }\n\
         clusters:\n  - { name: c, endpoints: [ { address: 127.0.0.1:1 } ] }\n\
         route_configs:\n  - name: r\n    routes:\n",
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "      - {{ name: r{i}, match: {{ metadata: [ {{ key: interface, exact: {SERVICE} }}, {{ key: method, exact: m{i} }} ] }}, route: {{ cluster: c }} }}\n"
        ));
    }
    let config = Config::from_yaml(&yaml).unwrap_or_else(|err| panic!("{err}"));
    let mut codecs = CodecRegistry::new();
    metaprotocol_dubbo::register(&mut codecs);
    // Building starts no task, but wants a runtime to be in.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("{err}"));
    let _in = runtime.enter();
    Proxy::builder(config)
        .codecs(codecs)
        .route_check()
        .unwrap_or_else(|err| panic!("{err}"))
}

fn route_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    group.throughput(Throughput::Elements(1));
    for routes in [10, 100, 1_000, 10_000] {
        let check = table(routes);
        for (position, route) in [("first", 0), ("middle", routes / 2), ("last", routes - 1)] {
            let metadata: Metadata = [
                (
                    ByteStr::from_static("interface"),
                    ByteStr::from_static(SERVICE),
                ),
                (
                    ByteStr::from_static("method"),
                    ByteStr::from(format!("m{route}")),
                ),
            ]
            .into_iter()
            .collect();
            let keys = RoutingKeys::new();
            let view = RoutingView {
                metadata: &metadata,
                keys: &keys,
            };
            let expected = format!("r{route}");
            group.bench_function(BenchmarkId::new(position, routes), |b| {
                b.iter(|| {
                    let matched = check.check("front", &view);
                    assert!(
                        matches!(&matched, Ok(Some(m)) if m.route == expected),
                        "{matched:?}"
                    );
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short: the machine is small and shared; the figures are compared run against run.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = route_match
}
criterion_main!(benches);
