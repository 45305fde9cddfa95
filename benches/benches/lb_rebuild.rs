//! Criterion bench of a cluster's rebuild: the time `Proxy::update_cluster` takes to publish a
//! cluster of 100, 1,000 and 5,000 endpoints whose last endpoint leaves or comes back, for the
//! balancers whose sets cost the most to build (`round_robin`'s smooth cycle, `maglev`'s table,
//! `ring_hash`'s ring) and `random` (a set of cumulated weights: the rest of the update, to read
//! the others against). Weights are equal, random in 1..=100, or skewed (one endpoint of 1,000,
//! the others 1). Health changes (outlier ejection, active checks) rebuild the same sets
//! without the config update around them. Nothing connects to the endpoints.
//!
//! `cargo bench -p metaprotocol-benches --bench lb_rebuild`

use std::time::Duration;

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use metaprotocol_benches::in_process::codecs;
use metaprotocol_router::Proxy;
use metaprotocol_router::config::{ClusterSpec, Config};

const SIZES: [usize; 3] = [100, 1_000, 5_000];
const POLICIES: [&str; 4] = ["round_robin", "maglev", "ring_hash", "random"];

/// The weights of `size` endpoints, by `kind`.
fn weights(kind: &str, size: usize) -> Vec<u32> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..size)
        .map(|i| match kind {
            "equal" => 1,
            "random" => rng.u32(1..=100),
            _ if i == 0 => 1_000,
            _ => 1,
        })
        .collect()
}

/// Cluster `big` of `policy` over endpoints 127.0.0.1:20000.. of `weights`.
fn cluster(policy: &str, weights: &[u32]) -> ClusterSpec {
    let endpoints: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, weight)| {
            format!(
                "{{ address: \"127.0.0.1:{}\", weight: {weight} }}",
                20_000 + i
            )
        })
        .collect();
    let yaml = format!(
        "name: big\nprotocol: dubbo\nlb_policy: {policy}\nendpoints: [ {} ]",
        endpoints.join(", ")
    );
    ClusterSpec::from_yaml(&yaml).unwrap_or_else(|err| panic!("{policy}: {err}"))
}

fn lb_rebuild(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|err| panic!("cannot start a runtime: {err}"));
    for kind in ["equal", "random", "skewed"] {
        let mut group = c.benchmark_group(format!("lb_rebuild/{kind}"));
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for size in SIZES {
            let all = weights(kind, size);
            for policy in POLICIES {
                let full = cluster(policy, &all);
                let fewer = cluster(policy, &all[..size - 1]);
                let mut config = Config::default();
                config.clusters.push(full.clone().into());
                let proxy = runtime
                    .block_on(Proxy::builder(config).codecs(codecs()).start())
                    .unwrap_or_else(|err| panic!("cannot start the proxy: {err}"));
                let mut leave = false;
                group.bench_function(format!("{policy}/{size}"), |b| {
                    b.iter_batched(
                        || {
                            // Alternately without the last endpoint and with it again.
                            leave = !leave;
                            if leave { fewer.clone() } else { full.clone() }
                        },
                        |spec| runtime.block_on(proxy.update_cluster(spec)),
                        BatchSize::PerIteration,
                    )
                });
                runtime.block_on(proxy.shutdown());
            }
        }
        group.finish();
    }
}

criterion_group!(benches, lb_rebuild);
criterion_main!(benches);
