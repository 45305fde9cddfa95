//! Endpoints named by a host name (Envoy's `STRICT_DNS`): resolved before their cluster is
//! built or updated, and again every `dns_refresh_rate` while it runs. Each address a name
//! resolves to (of the cluster's `dns_lookup_family`) is an endpoint with the spec's weight and
//! labels. A resolution that fails, times out or finds nothing keeps the addresses the name had.
//! A cluster's names are looked up together, so that a resolver that does not answer costs one
//! timeout, not one per name.
//! A name's addresses are kept sorted, and at most [`MAX_ADDRESSES_PER_NAME`] of them (the
//! lowest).
//!
//! Records' TTLs are not honoured: the system's resolver (`getaddrinfo`, through
//! [`tokio::net::lookup_host`]) answers with addresses alone, so names are resolved every
//! `dns_refresh_rate` whatever their TTLs. Reading TTLs would take a DNS client of our own in
//! place of the system's, which would lose what `nsswitch.conf` configures (LDAP, mDNS,
//! systemd-resolved's own rules) and add a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::ClusterHandle;
use crate::config::{ClusterSpec, EndpointAddress};

/// The addresses each host name of a cluster resolved to.
pub(crate) type Resolved = BTreeMap<EndpointAddress, Vec<SocketAddr>>;

/// The most addresses one name becomes endpoints for: each endpoint has its connections, its
/// health state and its metric series, and a DNS answer over TCP can carry thousands.
pub(crate) const MAX_ADDRESSES_PER_NAME: usize = 1_024;

/// The longest one resolution may take before the addresses last known are kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The names of a cluster looked up at once, at most: one at a time, a resolver that does not
/// answer held a config update (and each refresh) [`RESOLVE_TIMEOUT`] per name, a minute and a
/// half for 20 names.
const CONCURRENT_LOOKUPS: usize = 16;

/// Turns a host name and port into addresses.
pub(crate) trait Resolve: Send + Sync {
    /// Every address of `host`, with `port`.
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The system's resolver (`getaddrinfo`: `/etc/hosts`, then DNS).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The addresses of an endpoint: its own, or those its name resolved to.
pub(crate) fn addresses(address: &EndpointAddress, resolved: &Resolved) -> Vec<SocketAddr> {
    match address.socket_addr() {
        Some(address) => vec![address],
        None => resolved.get(address).cloned().unwrap_or_default(),
    }
}

/// The entries of `resolved` that `spec` still names.
pub(crate) fn kept(spec: &ClusterSpec, resolved: &Resolved) -> Resolved {
    spec.endpoints
        .iter()
        .filter_map(|e| Some((e.address.clone(), resolved.get(&e.address)?.clone())))
        .collect()
}

/// Resolves every host name of `spec`, [`CONCURRENT_LOOKUPS`] at a time; a name that cannot be
/// resolved keeps its addresses in `last`.
pub(crate) async fn resolve(
    resolver: &impl Resolve,
    spec: &ClusterSpec,
    last: &Resolved,
) -> Resolved {
    let mut names = spec
        .endpoints
        .iter()
        .map(|endpoint| &endpoint.address)
        .filter(|name| name.ip().is_none())
        .collect::<BTreeSet<_>>()
        .into_iter();
    let mut lookups = FuturesUnordered::new();
    for name in names.by_ref().take(CONCURRENT_LOOKUPS) {
        lookups.push(resolve_one(resolver, spec, name, last));
    }
    let mut resolved = Resolved::new();
    while let Some((name, addresses)) = lookups.next().await {
        resolved.insert(name, addresses);
        if let Some(name) = names.next() {
            lookups.push(resolve_one(resolver, spec, name, last));
        }
    }
    resolved
}

/// `name` with its addresses, or those it had in `last` when it cannot be resolved.
async fn resolve_one(
    resolver: &impl Resolve,
    spec: &ClusterSpec,
    name: &EndpointAddress,
    last: &Resolved,
) -> (EndpointAddress, Vec<SocketAddr>) {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.lookup(name.host(), name.port()));
    let found = match lookup.await {
        Ok(Ok(addresses)) => in_order(spec.dns_lookup_family.select(&addresses), spec, name),
        Ok(Err(err)) => {
            tracing::warn!(cluster = %spec.name, endpoint = %name, error = %err, "cannot resolve an endpoint; keeping its last addresses");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(cluster = %spec.name, endpoint = %name, "resolving an endpoint timed out; keeping its last addresses");
            Vec::new()
        }
    };
    let addresses = match (found.is_empty(), last.get(name)) {
        (true, Some(last)) => last.clone(),
        _ => found,
    };
    (name.clone(), addresses)
}

/// `addresses` sorted, without repeats, and at most [`MAX_ADDRESSES_PER_NAME`] of them.
///
/// A DNS server that rotates its answers (round-robin DNS) gives the same addresses in another
/// order each time; sorted, they compare equal and the cluster is not rebuilt for nothing.
fn in_order(
    mut addresses: Vec<SocketAddr>,
    spec: &ClusterSpec,
    name: &EndpointAddress,
) -> Vec<SocketAddr> {
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.len() > MAX_ADDRESSES_PER_NAME {
        tracing::warn!(cluster = %spec.name, endpoint = %name, found = addresses.len(), kept = MAX_ADDRESSES_PER_NAME, "an endpoint's name resolved to too many addresses; keeping the lowest");
        addresses.truncate(MAX_ADDRESSES_PER_NAME);
    }
    addresses
}

/// Resolves the host names of `cluster` every `dns_refresh_rate` until `stop` or the cluster is
/// gone, publishing a new snapshot whenever the addresses change.
pub(crate) async fn refresh(
    cluster: Weak<ClusterHandle>,
    resolver: impl Resolve,
    stop: CancellationToken,
) {
    loop {
        let Some(rate) = cluster.upgrade().map(|c| c.spec().dns_refresh_rate) else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(rate) => {}
        }
        let Some(handle) = cluster.upgrade() else {
            return;
        };
        let spec = handle.spec();
        if !spec.has_host_names() || handle.is_retired() {
            continue;
        }
        let last = handle.resolved();
        let resolved = resolve(&resolver, &spec, &last).await;
        if handle.resolve(&resolved) {
            tracing::info!(cluster = %spec.name, "endpoint addresses changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::stats::Metrics;

    /// Answers each lookup with the next scripted result (the last one forever after).
    struct Scripted(Mutex<Vec<io::Result<Vec<SocketAddr>>>>);

    impl Resolve for Scripted {
        async fn lookup(&self, _: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            let mut script = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
            let next = if script.len() > 1 {
                script.remove(0)
            } else {
                match script.first() {
                    Some(Ok(addresses)) => Ok(addresses.clone()),
                    _ => Err(io::Error::other("no answer")),
                }
            };
            next.map(|ips| {
                ips.into_iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect()
            })
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// A cluster's refresh task, running until stopped.
    struct Refreshing {
        stop: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Refreshing {
        async fn stop(self) {
            self.stop.cancel();
            let _ = self.task.await;
        }
    }

    /// Cluster `spec` built on `resolver`'s first answer, refreshed on the next ones.
    async fn refreshed(
        spec: &ClusterSpec,
        resolver: Scripted,
    ) -> Result<(Arc<ClusterHandle>, Refreshing), crate::config::ConfigError> {
        let first = resolve(&resolver, spec, &Resolved::new()).await;
        let handle = ClusterHandle::new(
            &Arc::new(spec.clone()),
            "null".into(),
            Arc::new(crate::testing::NullCodec),
            Metrics::new().root(),
            None,
            &first,
        )?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(refresh(Arc::downgrade(&handle), resolver, stop.clone()));
        Ok((handle, Refreshing { stop, task }))
    }

    fn endpoints(handle: &ClusterHandle) -> Vec<SocketAddr> {
        handle
            .snapshot()
            .hosts
            .iter()
            .map(|h| h.endpoint.address())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_and_failures_keep_the_last_addresses()
    -> Result<(), crate::config::ConfigError> {
        let spec = ClusterSpec::from_yaml(
            "name: c\ndns_refresh_rate: 1s\nendpoints: [ { address: \"backend.test:7000\" }, { address: \"127.0.0.1:7001\" } ]",
        )?;
        let resolver = Scripted(Mutex::new(vec![
            Ok(vec![addr("10.0.0.1:0"), addr("[fe80::1]:0")]),
            Err(io::Error::other("SERVFAIL")),
            Ok(vec![]),
            Ok(vec![addr("10.0.0.2:0"), addr("10.0.0.3:0")]),
        ]));
        let (handle, refreshing) = refreshed(&spec, resolver).await?;
        // IPv4 is preferred: the IPv6 address of the name is left out.
        assert_eq!(
            endpoints(&handle),
            [addr("10.0.0.1:7000"), addr("127.0.0.1:7001")]
        );
        let version = handle.snapshot().version;
        // A failure, then an empty answer: the last addresses stay, no rebuild.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(
            endpoints(&handle),
            [addr("10.0.0.1:7000"), addr("127.0.0.1:7001")]
        );
        assert_eq!(handle.snapshot().version, version);
        // New addresses: a new snapshot.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            endpoints(&handle),
            [
                addr("10.0.0.2:7000"),
                addr("10.0.0.3:7000"),
                addr("127.0.0.1:7001")
            ]
        );
        assert_eq!(handle.snapshot().version, version + 1);
        refreshing.stop().await;
        Ok(())
    }

    /// A DNS answer the refresh task takes while a config update of the cluster builds is kept
    /// when the update commits: the update set the addresses of its own lookup, older, and the
    /// cluster sent to the old address until the next refresh.
    #[tokio::test(start_paused = true)]
    async fn an_answer_taken_while_an_update_builds_outlives_the_updates_own()
    -> Result<(), crate::config::ConfigError> {
        let yaml = |weight: u32| {
            format!(
                "name: c\ndns_refresh_rate: 1s\nendpoints: [ {{ address: \"backend.test:7000\", weight: {weight} }} ]"
            )
        };
        let spec = ClusterSpec::from_yaml(&yaml(1))?;
        let resolver = Scripted(Mutex::new(vec![
            Ok(vec![addr("10.0.0.1:0")]),
            Ok(vec![addr("10.0.0.2:0")]),
        ]));
        let (handle, refreshing) = refreshed(&spec, resolver).await?;
        assert_eq!(endpoints(&handle), [addr("10.0.0.1:7000")]);

        // The update looks the name up (the old answer still) and builds.
        let next = Arc::new(ClusterSpec::from_yaml(&yaml(2))?);
        let taken = handle.answers_taken();
        let own = resolve(
            &Scripted(Mutex::new(vec![Ok(vec![addr("10.0.0.1:0")])])),
            &next,
            &handle.resolved(),
        )
        .await;
        let built = handle
            .prepare_update(&next, None, None, &own, taken, None)?
            .build();
        // Meanwhile the refresh task takes the new address.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(endpoints(&handle), [addr("10.0.0.2:7000")]);

        built.commit();
        assert_eq!(endpoints(&handle), [addr("10.0.0.2:7000")]);
        assert!(handle.snapshot().hosts.iter().all(|h| h.weight == 2));
        assert_eq!(
            handle.resolved().values().collect::<Vec<_>>(),
            [&vec![addr("10.0.0.2:7000")]]
        );
        refreshing.stop().await;
        Ok(())
    }

    /// Never answers.
    struct Silent;

    impl Resolve for Silent {
        async fn lookup(&self, _: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            std::future::pending().await
        }
    }

    /// A resolver that does not answer holds a cluster's resolution once its timeout, not once
    /// per name, and each name keeps the addresses it had.
    #[tokio::test(start_paused = true)]
    async fn names_that_get_no_answer_are_waited_for_together()
    -> Result<(), crate::config::ConfigError> {
        let spec = ClusterSpec::from_yaml(
            "name: c\nendpoints: [ { address: \"a.test:1\" }, { address: \"b.test:1\" }, { address: \"c.test:1\" }, { address: \"d.test:1\" } ]",
        )?;
        let last: Resolved = spec
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), vec![addr("10.0.0.1:1")]))
            .collect();
        let started = tokio::time::Instant::now();
        let resolved = resolve(&Silent, &spec, &last).await;
        let took = started.elapsed();
        assert!(took < 2 * RESOLVE_TIMEOUT, "took {took:?}");
        assert_eq!(resolved, last);
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_in_another_order_change_nothing_and_too_many_are_cut()
    -> Result<(), crate::config::ConfigError> {
        let spec = ClusterSpec::from_yaml(
            "name: c\ndns_refresh_rate: 1s\nendpoints: [ { address: \"backend.test:7000\" } ]",
        )?;
        let many = (0..3_000_u32)
            .map(|i| SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + 3_000 - i), 0)))
            .collect();
        let resolver = Scripted(Mutex::new(vec![
            Ok(vec![
                addr("10.0.0.2:0"),
                addr("10.0.0.1:0"),
                addr("10.0.0.2:0"),
            ]),
            Ok(vec![addr("10.0.0.1:0"), addr("10.0.0.2:0")]),
            Ok(vec![addr("10.0.0.2:0"), addr("10.0.0.1:0")]),
            Ok(many),
        ]));
        let (handle, refreshing) = refreshed(&spec, resolver).await?;
        assert_eq!(
            endpoints(&handle),
            [addr("10.0.0.1:7000"), addr("10.0.0.2:7000")]
        );
        let version = handle.snapshot().version;
        // The same addresses in other orders: no rebuild.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(handle.snapshot().version, version);
        // 3,000 addresses: the lowest 1,024 are endpoints.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kept = endpoints(&handle);
        assert_eq!(kept.len(), MAX_ADDRESSES_PER_NAME);
        assert_eq!(kept.first(), Some(&addr("10.0.0.1:7000")));
        assert_eq!(kept.last(), Some(&addr("10.0.4.0:7000")));
        refreshing.stop().await;
        Ok(())
    }
}
