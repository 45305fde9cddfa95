//! One try of a request on one endpoint: take its places under the cluster's circuit breakers,
//! pick, track, queue.

use std::net::SocketAddr;
use std::sync::Arc;

use metaprotocol_core::{Message, Mutation};
use tokio::time::Instant;

use super::timeout::SendDeadline;
use crate::cluster::{
    ActiveRequest, Breaker, ClusterHandle, ClusterSnapshot, Endpoint, Host, PendingPlace,
    RequestPlace,
};
use crate::published::Cached;
use crate::route::Target;
use crate::upstream::{ConnectionHandle, Outbound, Rejected, ReplyTo, UpstreamError};

/// An attempt in flight.
#[derive(Debug)]
pub(crate) struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    pub started: Instant,
    /// Where it went.
    pub host: Arc<Host>,
    /// Keeps the endpoint's and cluster's in-flight counts until the attempt ends.
    active: ActiveRequest,
}

impl Attempt {
    pub fn endpoint(&self) -> SocketAddr {
        self.active.endpoint().address()
    }

    /// The endpoint it went to.
    pub fn target(&self) -> &Endpoint {
        self.active.endpoint()
    }
}

/// How starting an attempt went.
pub(crate) enum Started {
    /// Queued on an endpoint; the answer comes through the reply.
    Sent(Attempt),
    /// The endpoint refused it at once (backing off, overloaded); it was not sent.
    Refused {
        host: Arc<Host>,
        error: UpstreamError,
    },
    /// The target has no endpoint.
    NoEndpoint,
    /// A circuit breaker of the cluster refused it; it was not sent.
    Overflow(Breaker),
}

/// What an attempt is: its number (1 for the first), what to avoid, how to pick.
pub(crate) struct AttemptSpec<'a> {
    pub number: u32,
    /// Endpoints this request already failed on.
    pub tried: &'a [SocketAddr],
    /// The request's consistent-hashing key.
    pub hash: Option<u64>,
    pub deadline: Instant,
    /// Whether its server is told what is left of `deadline` ([`super::timeout::tells_deadline`]).
    pub tells_deadline: bool,
    /// When the attempt starts: the clock its caller read for the whole batch of work.
    pub now: Instant,
}

/// The snapshots of the clusters a connection's requests went to, each a copy read again only
/// once its cluster published another: an attempt reads its cluster's snapshot without an
/// `ArcSwap` load (a debt slot claimed and given back, two locked instructions and about fifty
/// in all, every call). A snapshot replaced is let go at the next attempt through the list, of
/// whatever cluster: a busy connection does not keep endpoints an update removed.
///
/// Its owner keeps it for one route table, and clears it when it reads another (see
/// [`Snapshots::clear`]): its clusters are the table's, so that it keeps no cluster alive that
/// the configuration dropped.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    copies: Vec<(Arc<ClusterHandle>, Cached<ClusterSnapshot>)>,
}

/// How many clusters' snapshots a connection keeps: a connection's requests rarely go to more;
/// past it, the one copied first makes room.
const SNAPSHOTS: usize = 4;

impl Snapshots {
    /// The current snapshot of `cluster`: its copy, unless the cluster published another since
    /// it was made. Copies of other clusters that published another since go.
    pub fn get(&mut self, cluster: &Arc<ClusterHandle>) -> &Arc<ClusterSnapshot> {
        let mut found = None;
        let mut i = 0;
        while let Some((kept, copy)) = self.copies.get(i) {
            if Arc::ptr_eq(kept, cluster) {
                found = Some(i);
            } else if !copy.is_current(kept.published_snapshot()) {
                self.copies.swap_remove(i);
                continue;
            }
            i += 1;
        }
        let index = match found {
            Some(index) => index,
            None => {
                if self.copies.len() >= SNAPSHOTS {
                    self.copies.remove(0);
                }
                let copy = cluster.published_snapshot().cached();
                self.copies.push((Arc::clone(cluster), copy));
                self.copies.len() - 1
            }
        };
        let (kept, copy) = &mut self.copies[index];
        copy.get(kept.published_snapshot())
    }

    /// Lets every copy go (the route table they were kept for was replaced, or the connection
    /// went idle).
    pub fn clear(&mut self) {
        self.copies.clear();
    }
}

/// Picks a host of `target`, avoiding those `tried`, by the request's consistent-hashing key
/// `hash` when its balancer hashes, and counts an attempt in flight on its endpoint (until the
/// returned guard drops, which gives back `place` too); `None` when the target has no endpoint
/// (`place` given back). The cluster's snapshot is read through `snapshots` when given.
pub(crate) fn pick(
    target: &Target,
    snapshots: Option<&mut Snapshots>,
    tried: &[SocketAddr],
    hash: Option<u64>,
    place: Option<RequestPlace<'_>>,
) -> Option<(Arc<Host>, ActiveRequest)> {
    let loaded;
    let snapshot = match snapshots {
        Some(snapshots) => snapshots.get(&target.cluster),
        None => {
            loaded = target.cluster.snapshot();
            &*loaded
        }
    };
    let host = snapshot
        .set(target.subset)
        .and_then(|set| set.pick(tried, hash))?;
    let active = host.endpoint.track().holding(place);
    Some((host.clone(), active))
}

/// Queues `request` on `endpoint` with `mutation`, to be answered through `reply` by
/// `deadline` (its server told what is left of it if it says so), holding `place` while it
/// waits in a connection's queue, and tells `queued_on` the connection that took it; a refusal
/// hands the request back (it was not sent).
// The refused request comes back whole, without an allocation (see `UpstreamPool::send`).
#[allow(clippy::result_large_err)]
pub(crate) fn send(
    endpoint: &Endpoint,
    request: &Arc<Message>,
    mutation: Arc<Mutation>,
    deadline: SendDeadline,
    reply: ReplyTo,
    place: Option<PendingPlace<'_>>,
    queued_on: impl FnOnce(&ConnectionHandle),
) -> Result<(), Rejected> {
    let pool = endpoint.pool();
    let variant = pool.codec().upstream_variant(request);
    let placed = place.is_some_and(|p| p.hand_over(pool.breakers()));
    pool.send_telling(
        variant,
        Outbound {
            message: request.clone(),
            mutation,
            deadline: deadline.at,
            tells_deadline: deadline.told,
            reply,
            placed,
        },
        queued_on,
    )
}

/// Takes the attempt's places under the cluster's breakers, picks an endpoint of `target` (its
/// cluster's snapshot read through `snapshots` when given) and queues `request` on it, with the
/// mutation `mutation` makes for the endpoint picked, telling `queued_on` the connection that
/// took it.
pub(crate) fn start(
    target: &Target,
    snapshots: Option<&mut Snapshots>,
    request: &Arc<Message>,
    mutation: impl FnOnce(SocketAddr) -> Arc<Mutation>,
    spec: AttemptSpec<'_>,
    reply: ReplyTo,
    queued_on: impl FnOnce(&ConnectionHandle),
) -> Started {
    let admission = match target.cluster.breakers().admit(target.cluster.stats()) {
        Ok(admission) => admission,
        Err(breaker) => return Started::Overflow(breaker),
    };
    let AttemptSpec {
        number,
        tried,
        hash,
        deadline,
        tells_deadline,
        now,
    } = spec;
    let Some((host, active)) = pick(target, snapshots, tried, hash, admission.request) else {
        return Started::NoEndpoint;
    };
    let endpoint = active.endpoint();
    let deadline = SendDeadline {
        at: deadline,
        told: tells_deadline,
    };
    match send(
        endpoint,
        request,
        mutation(endpoint.address()),
        deadline,
        reply,
        admission.pending,
        queued_on,
    ) {
        Ok(()) => Started::Sent(Attempt {
            number,
            started: now,
            host,
            active,
        }),
        Err(mut rejected) => {
            rejected.outbound.reply.disarm();
            Started::Refused {
                host,
                error: rejected.error,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use metaprotocol_core::MessageKind;

    use super::*;
    use crate::cluster::SubsetId;

    /// Attempts started on eight threads at once against `max_requests: 2`, each held a moment
    /// once sent: never more than two are in flight at once, as their holders count them.
    #[test]
    fn attempts_started_at_once_never_pass_max_requests() -> Result<(), Box<dyn std::error::Error>>
    {
        let cluster = crate::cluster::tests::cluster(
            "name: c
endpoints: [ { address: 127.0.0.1:1 } ]
circuit_breakers: { max_requests: 2, max_pending_requests: 1000000 }",
        )?;
        let target = Target {
            cluster,
            subset: SubsetId::ALL,
        };
        // A runtime never driven: the connection's task never runs, its requests wait in its
        // queue (which holds 16 Ki; the threads stop well before).
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let (holders, most, sent) = (AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0));
        let until = std::time::Instant::now() + Duration::from_secs(3);
        std::thread::scope(|threads| {
            for _ in 0..8 {
                threads.spawn(|| {
                    let _entered = runtime.handle().enter();
                    while std::time::Instant::now() < until && sent.load(Ordering::Relaxed) < 15_000
                    {
                        if let Started::Sent(attempt) = start_one(&target, &request) {
                            let held = holders.fetch_add(1, Ordering::AcqRel) + 1;
                            most.fetch_max(held, Ordering::Relaxed);
                            sent.fetch_add(1, Ordering::Relaxed);
                            std::thread::yield_now();
                            holders.fetch_sub(1, Ordering::AcqRel);
                            drop(attempt);
                        }
                    }
                });
            }
        });
        assert!(sent.into_inner() > 0);
        let most = most.into_inner();
        assert!(most <= 2, "{most} attempts in flight at once");
        let status = target.cluster.breakers().status(target.cluster.stats());
        assert!(
            status
                .iter()
                .any(|s| s.breaker == "max_requests" && s.current == 0),
            "every attempt gave its place back as it ended: {status:?}"
        );
        Ok(())
    }

    /// Eight threads start attempts without pause, each held a moment, on a cluster without
    /// limits; an update sets `max_requests: 2` midway. Once the attempts from before it have
    /// ended (each lasts a moment; a second is given), never more than two are in flight, and
    /// attempts go on being admitted: what the update found in flight leaves no place taken.
    #[test]
    fn an_update_mid_load_leaves_max_requests_exact_once_the_old_attempts_end()
    -> Result<(), Box<dyn std::error::Error>> {
        let (cluster, target) = unlimited_target()?;
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let limited = Arc::new(crate::config::ClusterSpec::from_yaml(&format!(
            "{UNLIMITED}\ncircuit_breakers: {{ max_requests: 2, max_pending_requests: 1000000 }}"
        ))?);
        // Held at once, and sent, once the old attempts have ended.
        let (holders, most, settled_sent) =
            (AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0));
        let start_at = std::time::Instant::now();
        let (update_at, settled_at, until) = (
            start_at + Duration::from_millis(200),
            start_at + Duration::from_millis(1_200),
            start_at + Duration::from_millis(1_700),
        );
        std::thread::scope(|threads| -> Result<(), crate::config::ConfigError> {
            for _ in 0..8 {
                threads.spawn(|| {
                    let _entered = runtime.handle().enter();
                    while std::time::Instant::now() < until {
                        // At most one a millisecond a thread: the queue of the connection never
                        // driven holds 16 Ki requests, more than 8 threads send in 1.7 s.
                        std::thread::sleep(Duration::from_millis(1));
                        let Started::Sent(attempt) = start_one(&target, &request) else {
                            continue;
                        };
                        let held = holders.fetch_add(1, Ordering::AcqRel) + 1;
                        if std::time::Instant::now() >= settled_at {
                            most.fetch_max(held, Ordering::Relaxed);
                            settled_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::yield_now();
                        holders.fetch_sub(1, Ordering::AcqRel);
                        drop(attempt);
                    }
                });
            }
            std::thread::sleep(update_at.saturating_duration_since(std::time::Instant::now()));
            cluster.update(&limited, None, None, &crate::cluster::Resolved::new())?;
            Ok(())
        })?;
        let most = most.into_inner();
        assert!(most <= 2, "{most} attempts in flight at once");
        assert!(
            settled_sent.into_inner() > 0,
            "attempts are still admitted after the update"
        );
        let status = cluster.breakers().status(cluster.stats());
        assert!(
            status
                .iter()
                .any(|s| s.breaker == "max_requests" && s.current == 0),
            "{status:?}"
        );
        Ok(())
    }

    /// A cluster without limits.
    const UNLIMITED: &str = "name: c\nendpoints: [ { address: 127.0.0.1:1 } ]";

    /// A cluster without limits, and a target of all of it.
    fn unlimited_target()
    -> Result<(Arc<crate::cluster::ClusterHandle>, Target), crate::config::ConfigError> {
        let cluster = crate::cluster::tests::cluster(UNLIMITED)?;
        let target = Target {
            cluster: cluster.clone(),
            subset: SubsetId::ALL,
        };
        Ok((cluster, target))
    }

    /// Starts one attempt of `request` on `target`, as the router does.
    pub(crate) fn start_one(target: &Target, request: &Arc<Message>) -> Started {
        let now = Instant::now();
        let spec = AttemptSpec {
            number: 1,
            tried: &[],
            hash: None,
            deadline: now + Duration::from_secs(60),
            tells_deadline: false,
            now,
        };
        let mutation = Arc::new(Mutation::default());
        start(
            target,
            None,
            request,
            |_| mutation,
            spec,
            ReplyTo::none(),
            |_| {},
        )
    }

    /// An update sets `max_requests: 4` on a cluster that had no limit, with six attempts in
    /// flight: the limit applies to them at once, as Envoy's does to what its cluster counts. No
    /// attempt starts until fewer than four are in flight, old ones included, and then only as
    /// many as make four.
    #[test]
    fn a_limit_an_update_sets_counts_the_attempts_already_in_flight()
    -> Result<(), Box<dyn std::error::Error>> {
        let (cluster, target) = unlimited_target()?;
        // A runtime never driven: the attempts wait in their connection's queue.
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let _entered = runtime.handle().enter();
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        let mut old: Vec<Started> = (0..6).map(|_| start_one(&target, &request)).collect();
        assert!(old.iter().all(|s| matches!(s, Started::Sent(_))));
        let limited = Arc::new(crate::config::ClusterSpec::from_yaml(&format!(
            "{UNLIMITED}\ncircuit_breakers: {{ max_requests: 4, max_pending_requests: 1000 }}"
        ))?);
        cluster.update(&limited, None, None, &crate::cluster::Resolved::new())?;
        let overflows = |started: &Started| matches!(started, Started::Overflow(Breaker::Requests));
        assert!(
            overflows(&start_one(&target, &request)),
            "six in flight, four allowed"
        );
        old.truncate(3);
        let new: Vec<Started> = (0..2).map(|_| start_one(&target, &request)).collect();
        assert!(
            matches!(new[0], Started::Sent(_)) && overflows(&new[1]),
            "three old in flight: room for one"
        );
        old.clear();
        let more: Vec<Started> = (0..4).map(|_| start_one(&target, &request)).collect();
        let sent = more
            .iter()
            .filter(|s| matches!(s, Started::Sent(_)))
            .count();
        assert_eq!(
            sent, 3,
            "the old ones ended: one new in flight, room for three"
        );
        Ok(())
    }

    /// Requests' places under `max_pending_requests` are given back however the requests leave
    /// their connection's queue (taken and written; refused as their connection could not be
    /// opened) or are refused before it (by the pool backing off after that), each once: none
    /// is left held, and the limit still holds after.
    #[tokio::test]
    async fn every_queued_request_gives_its_pending_place_back_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (_dead, dead) = crate::testing::refusing_address()?;
        let request = Arc::new(Message::new(MessageKind::Request, 1, Bytes::new()));
        for address in [upstream.local_addr()?, dead] {
            let spec = Arc::new(crate::config::ClusterSpec::from_yaml(&format!(
                "name: c
endpoints: [ {{ address: {address} }} ]
circuit_breakers: {{ max_pending_requests: 2 }}"
            ))?);
            let target = Target {
                cluster: crate::cluster::ClusterHandle::new(
                    &spec,
                    "silent".into(),
                    Arc::new(crate::testing::SilentCodec),
                    crate::stats::Metrics::new().root().detached("cluster", "c"),
                    None,
                    &crate::cluster::Resolved::new(),
                )?,
                subset: SubsetId::ALL,
            };
            let pending = || {
                let status = target.cluster.breakers().status(target.cluster.stats());
                status
                    .into_iter()
                    .find(|s| s.breaker == "max_pending_requests")
                    .map(|s| s.current)
            };
            let queue_three = || {
                let started: Vec<Started> = (0..3).map(|_| start_one(&target, &request)).collect();
                let sent = started
                    .iter()
                    .filter(|s| matches!(s, Started::Sent(_)))
                    .count();
                let overflow = matches!(started[2], Started::Overflow(Breaker::PendingRequests));
                (sent, overflow)
            };
            // Queued while their connection opens (its task has not run yet): two places.
            assert_eq!(queue_three(), (2, true), "{address}");
            assert_eq!(pending(), Some(2));
            // The connection opens, takes and writes them, or fails and refuses them.
            tokio::time::timeout(Duration::from_secs(10), async {
                while pending() != Some(0) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .map_err(|_| format!("{address}: places held after 10 s: {:?}", pending()))?;
            if address == dead {
                // The pool backs off the endpoint now: it refuses the request itself.
                assert!(matches!(
                    start_one(&target, &request),
                    Started::Refused { .. }
                ));
                assert_eq!(pending(), Some(0), "the pool gave its place back");
            } else {
                assert_eq!(queue_three(), (2, true), "no place given back twice");
            }
        }
        Ok(())
    }
}
