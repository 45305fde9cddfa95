//! Clusters, endpoints and listeners change under load without a failed call or a closed
//! client connection: 20 Dubbo clients call continuously while endpoints are added, removed and
//! reweighted, a cluster and a listener come and go, 200 times in all, through the embedding
//! API, the admin API and the watched config file. Endpoints that stay keep their upstream
//! connections.

#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use metaprotocol_examples::dubbo_demo::{DemoProvider, DubboClient};
use metaprotocol_router::config::{ClusterSpec, ListenerSpec};
use metaprotocol_router::{Config, Proxy};
use support::TestResult;
use support::admin::http;
use support::process::Scratch;

const CLIENTS: usize = 20;
const UPDATES: usize = 200;

/// What the config says at one moment.
#[derive(Clone, Debug)]
struct Shape {
    /// `main`'s endpoints and weights.
    main: Vec<(SocketAddr, u32)>,
    /// The address of cluster `extra`'s endpoint, when it exists.
    extra: Option<SocketAddr>,
    /// Whether listener `side` exists.
    side: bool,
}

impl Shape {
    fn yaml(&self) -> String {
        let endpoints: String = self
            .main
            .iter()
            .map(|(address, weight)| {
                format!("      - {{ address: {address}, weight: {weight} }}\n")
            })
            .collect();
        let side = if self.side {
            "  - { name: side, address: 127.0.0.1:0, protocol: dubbo, route_config: r }\n"
        } else {
            ""
        };
        let extra = match self.extra {
            Some(address) => {
                format!("  - {{ name: extra, endpoints: [ {{ address: {address} }} ] }}\n")
            }
            None => String::new(),
        };
        format!(
            "admin: {{ address: 127.0.0.1:0 }}
listeners:
  - {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }}
{side}route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: main }} }} ] }}
clusters:
  - name: main
    endpoints:
{endpoints}{extra}"
        )
    }

    fn config(&self) -> TestResult<Config> {
        Ok(Config::from_yaml(&self.yaml())?)
    }

    fn cluster(&self, name: &str) -> TestResult<ClusterSpec> {
        self.config()?
            .cluster(name)
            .cloned()
            .ok_or_else(|| format!("no cluster {name}").into())
    }

    fn listener(&self, name: &str) -> TestResult<ListenerSpec> {
        self.config()?
            .listeners
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| format!("no listener {name}").into())
    }
}

/// How a change reaches the proxy.
#[derive(Clone, Copy, Debug)]
enum Channel {
    Embedding,
    Admin,
    File,
}

struct World {
    proxy: Proxy,
    admin: SocketAddr,
    file: std::path::PathBuf,
    _scratch: Scratch,
}

impl World {
    /// Applies `shape` after a change to cluster `changed` (or a listener change when `None`)
    /// through `channel`; returns when the proxy runs it.
    async fn apply(&self, shape: &Shape, changed: Option<&str>, channel: Channel) -> TestResult {
        let cluster_exists = |name: &str| name == "main" || shape.extra.is_some();
        match (channel, changed) {
            (Channel::File, _) => {
                // Written whole, then renamed in place, as ConfigMaps do: applied at the next
                // look (a file written in place waits to settle first).
                let next = self.file.with_extension("next");
                std::fs::write(&next, shape.yaml())?;
                std::fs::rename(&next, &self.file)?;
                let expected = shape.config()?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while self.proxy.config() != expected {
                    if tokio::time::Instant::now() > deadline {
                        return Err("the config file was not applied".into());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (Channel::Embedding, Some(name)) if cluster_exists(name) => {
                self.proxy.update_cluster(shape.cluster(name)?).await?;
            }
            (Channel::Embedding, Some(name)) => self.proxy.remove_cluster(name).await?,
            (Channel::Admin, Some(name)) if cluster_exists(name) => {
                let body = serde_json::to_string(&shape.cluster(name)?)?;
                let (status, answer) =
                    http(self.admin, "PUT", &format!("/clusters/{name}"), &body).await?;
                assert_eq!(status, 200, "{answer}");
            }
            (Channel::Admin, Some(name)) => {
                let (status, answer) =
                    http(self.admin, "DELETE", &format!("/clusters/{name}"), "").await?;
                assert_eq!(status, 200, "{answer}");
            }
            (_, None) if shape.side => {
                self.proxy.add_listener(shape.listener("side")?).await?;
            }
            (_, None) => self.proxy.remove_listener("side").await?,
        }
        Ok(())
    }
}

/// Calls until `stop`, counting calls and failures.
fn caller(
    client: Arc<DubboClient>,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match client.call("sayHello", "load", &[]).await {
                Ok(reply) if reply.dubbo_status == 20 => {}
                other => {
                    eprintln!("failed call: {other:?}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            calls.fetch_add(1, Ordering::Relaxed);
        }
    })
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_endpoints_and_listeners_change_under_load_without_a_failed_call() -> TestResult {
    let mut providers = Vec::new();
    for name in ["p0", "p1", "p2", "p3"] {
        providers.push(DemoProvider::start(name).await?);
    }
    let address = |i: usize| providers[i].address();
    let mut shape = Shape {
        main: vec![(address(0), 1), (address(1), 1)],
        extra: None,
        side: false,
    };
    let scratch = Scratch::new("live-updates")?;
    let file = scratch.path("proxy.yaml");
    std::fs::write(&file, shape.yaml())?;
    let proxy = Proxy::start(
        Config::from_file(&file)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    let watcher = {
        let proxy = proxy.clone();
        let file = file.clone();
        tokio::spawn(async move { proxy.watch_file(&file, Duration::from_millis(10)).await })
    };
    let world = World {
        admin: proxy.admin_addr().ok_or("no admin")?,
        proxy,
        file,
        _scratch: scratch,
    };
    let listener = world.proxy.listener_addr("in").ok_or("no listener")?;

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let clients: Vec<Arc<DubboClient>> = (0..CLIENTS)
        .map(|_| Arc::new(DubboClient::new(listener)))
        .collect();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| caller(c.clone(), stop.clone(), calls.clone(), failures.clone()))
        .collect();
    while calls.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p0_connections = providers[0].connections();

    let channels = [Channel::Embedding, Channel::Admin, Channel::File];
    for i in 0..UPDATES {
        let channel = channels[i % channels.len()];
        let changed = match i % 9 {
            0 => {
                shape.main.push((address(2), 1));
                Some("main")
            }
            1 => {
                shape.main[0].1 = 1 + (i as u32 % 4);
                Some("main")
            }
            2 => {
                shape.main.retain(|(a, _)| *a != address(2));
                Some("main")
            }
            3 => {
                shape.extra = Some(address(3));
                Some("extra")
            }
            4 => {
                shape.extra = None;
                Some("extra")
            }
            5 => {
                shape.side = true;
                None
            }
            6 => {
                shape.side = false;
                None
            }
            7 => {
                shape.main.retain(|(a, _)| *a != address(1));
                Some("main")
            }
            _ => {
                shape.main.push((address(1), 2));
                Some("main")
            }
        };
        world.apply(&shape, changed, channel).await?;
        if shape.side && changed.is_none() {
            let side = world
                .proxy
                .listener_addr("side")
                .ok_or("side is not bound")?;
            let reply = DubboClient::new(side).call("sayHello", "side", &[]).await?;
            assert_eq!(reply.dubbo_status, 20, "the added listener serves");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    watcher.abort();

    let total = calls.load(Ordering::Relaxed);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {total} calls");
    assert!(total > 1000, "only {total} calls");
    let metrics = world.proxy.metrics().render();
    assert_eq!(
        metric(
            &metrics,
            "metaprotocol_downstream_cx_total{listener=\"in\"}"
        ),
        Some(CLIENTS as u64),
        "no client connection was closed and reopened"
    );
    assert_eq!(
        providers[0].connections(),
        p0_connections,
        "the endpoint that stayed kept its upstream connections"
    );
    assert!(
        metric(
            &metrics,
            "metaprotocol_config_reloads_total{outcome=\"applied\"}"
        )
        .is_some_and(|n| n >= UPDATES as u64),
        "{metrics}"
    );
    for client in &clients {
        assert_eq!(client.open_connections(), 1);
    }
    world.proxy.shutdown().await;
    Ok(())
}

/// A config file changed after the proxy read it at start, before its watch began (a
/// ConfigMap updated as the pod starts; under load the watch begins a while after the read),
/// was read by the watch and taken for the config the proxy ran: the change was never applied,
/// until the file changed again. Watched from the contents the proxy started with, the change
/// is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_before_its_watch_begins_is_applied() -> TestResult {
    let (v1, v2) = (
        DemoProvider::start("v1").await?,
        DemoProvider::start("v2").await?,
    );
    let yaml = |provider: &DemoProvider| {
        format!(
            "listeners: [ {{ name: in, address: 127.0.0.1:0, protocol: dubbo, route_config: r }} ]
route_configs: [ {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }} ]
clusters: [ {{ name: c, endpoints: [ {{ address: {} }} ] }} ]
",
            provider.address()
        )
    };
    let scratch = Scratch::new("live-updates-before-watch")?;
    let file = scratch.path("proxy.yaml");
    std::fs::write(&file, yaml(&v1))?;
    let started_with = std::fs::read(&file)?;
    let proxy = Proxy::start(
        Config::from_yaml(std::str::from_utf8(&started_with)?)?,
        metaprotocol_examples::codec_registry(),
    )
    .await?;
    // Replaced by rename, as a ConfigMap's file is, before the watch begins.
    let next = scratch.path("proxy.next");
    std::fs::write(&next, yaml(&v2))?;
    std::fs::rename(&next, &file)?;
    let watcher = {
        let (proxy, file) = (proxy.clone(), file.clone());
        tokio::spawn(async move {
            proxy
                .watch_file_started_with(&file, Duration::from_millis(10), started_with)
                .await
        })
    };
    let client = DubboClient::new(proxy.listener_addr("in").ok_or("no listener")?);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client
        .call("sayHello", "a", &[])
        .await?
        .attachment("provider")
        != Some("v2")
    {
        if std::time::Instant::now() > deadline {
            return Err("the file changed before the watch began was not applied in 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    proxy.shutdown().await;
    Ok(())
}
