//! The running engine: builds everything a config describes, binds the listeners, applies
//! updates (route configs, clusters, listeners) without closing connections, and drains on
//! shutdown.

mod arrivals;
pub(crate) mod build;
mod codec_files;
mod dynamic;
mod file_reads;
mod layers;
mod listeners;
mod status;
mod update;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use metaprotocol_core::CodecRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::arrivals::{Arrival, Arrivals};
use self::build::Builder;
use self::dynamic::DynamicSources;
pub use self::dynamic::{DynamicSource, DynamicUpdate};
use self::file_reads::{Called, FILE_READ_TIMEOUT, FileReaders, OneAtATime};
use self::layers::Layers;
use self::listeners::ListenerManager;
use self::status::StatusRegistry;
pub use self::status::{ConfigFileStatus, ResourceId, ResourceKind, ResourceState, ResourceStatus};
pub(crate) use self::update::with_deadline;
use self::update::{Source, Updates};
use crate::access_log;
use crate::admin::LogControl;
use crate::cluster::{ClusterManager, ClusterStatus};
use crate::config::{ClusterSpec, Config, ConfigError, ListenerSpec, RouteConfigSpec};
use crate::file_stamp::Stamp;
use crate::filters::{FilterRegistry, SharedClients};
use crate::route::{RouteCheck, RouteSlot};
use crate::server::{
    BusyPoll, DEFAULT_LINGER, DrainPolicy, LINGER_BUCKETS, Linger, Load, Parking, Workers,
};
use crate::stats::Counter;
use crate::stats::{Metrics, MetricsSettings};
use crate::trace;

/// How long shutdown lets connections keep serving before it answers what is still in flight
/// with an error and closes them (the config's `drain_time` sets it).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Proxy::shutdown_now`] waits for the connections it ends: their answers are
/// written at once, and a client that reads them and closes takes a round trip.
pub const SHUTDOWN_NOW_GRACE: Duration = Duration::from_secs(1);

/// How long [`Proxy::shutdown`] waits, once the connections are gone, for the access log
/// writers to write the lines still queued (a writer stuck on a pipe nobody reads never does).
pub const ACCESS_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a config file written in place must stay the same before
/// [`Proxy::watch_file`] applies it: far longer than `cp` or an editor takes to write a config,
/// short enough that an edit takes effect at once to a person.
pub const CONFIG_FILE_SETTLE: Duration = Duration::from_secs(1);

/// The watched config file's metadata at one look.
#[derive(Default)]
struct Look {
    /// `None`: it could not be looked at.
    stamp: Option<Stamp>,
    /// True if it had changed too recently for its stamp to show the next change.
    unsettled: bool,
    /// How a file last arrived at a name the path goes through, as reported since the look
    /// before (`None`: no report).
    arrived: Option<Arrival>,
}

/// What a look at the watched config file finds: its stamp, and the names in its directory
/// that it goes through.
type Looked = (Option<Stamp>, Vec<OsString>);

impl Look {
    /// Looks at `path` (by one of `looks`, off the runtime: a `stat` may block, on a network
    /// file system say, and one that has not ended within [`FILE_READ_TIMEOUT`] is an error
    /// that says so), and reads the `arrivals` at the names it goes through in its directory:
    /// its own, and where it is a symlink to a relative path, that path's first name (a
    /// ConfigMap's `..data`).
    async fn at(
        path: &Path,
        arrivals: &Arrivals,
        looks: &mut OneAtATime<Looked>,
    ) -> Result<Self, String> {
        let path = path.to_owned();
        let now = SystemTime::now();
        let look = move || {
            let through = std::fs::read_link(&path).ok().and_then(|target| {
                match target.components().find(|c| *c != Component::CurDir) {
                    Some(Component::Normal(name)) => Some(name.to_owned()),
                    _ => None,
                }
            });
            let names: Vec<OsString> = path
                .file_name()
                .map(OsStr::to_owned)
                .into_iter()
                .chain(through)
                .collect();
            (Stamp::of(&path), names)
        };
        let (stamp, names) = match looks.call(FILE_READ_TIMEOUT, look).await {
            // A late look's stamp is older than this look: a change since shows at the next.
            Called::Answered(looked) | Called::AnsweredLate(looked) => looked,
            Called::Unanswered => return Err(not_ended("look at it", FILE_READ_TIMEOUT)),
            Called::Failed(_) => Looked::default(),
        };
        let names: Vec<&OsStr> = names.iter().map(OsString::as_os_str).collect();
        Ok(Self {
            unsettled: stamp.is_some_and(|stamp| stamp.unsettled(now)),
            stamp,
            arrived: arrivals.latest(&names),
        })
    }

    /// True if this look's metadata shows no change of the contents read after `before`.
    fn shows_no_change_since(&self, before: &Self) -> bool {
        self.stamp.is_some() && self.stamp == before.stamp && !before.unsettled
    }

    /// True if the path names another file than at `before`, one renamed over a name it goes
    /// through (its own, or a symlink's on the way, as a ConfigMap's is swapped): it was whole
    /// before it appeared. A file created at the path (the old one renamed aside, as vim does)
    /// may still be being written, as may one whose arrival went unreported. The last arrival
    /// reported in this look, or else in the one before, is the one that counts: a rename just
    /// after `before` looked at the path is reported there.
    fn replaced(&self, before: &Self) -> bool {
        self.arrived.or(before.arrived) == Some(Arrival::Renamed)
            && matches!((&self.stamp, &before.stamp), (Some(now), Some(then)) if !now.same_file(then))
    }
}

/// The config file's contents rejected for what may change outside them, to try again.
struct Retry {
    contents: Vec<u8>,
    /// Why they were rejected, as said.
    error: String,
    /// The files the update read, as they looked then, when it was rejected for one of them:
    /// tried again once one of them may hold other contents. Otherwise (an address in use, a
    /// file not read in time) at every look.
    files: Option<crate::file_stamp::FilesLooked>,
    /// The looks at `files`: one that had not ended by its deadline (a `stat` on a network
    /// file system that does not answer) is taken once it comes, and no other look starts
    /// while it runs.
    looks: OneAtATime<bool>,
}

impl Retry {
    /// Contents rejected with `error`, to try again (see [`Retry::files`]).
    fn new(
        contents: Vec<u8>,
        error: String,
        files: Option<crate::file_stamp::FilesLooked>,
    ) -> Self {
        Self {
            contents,
            error,
            files,
            looks: OneAtATime::default(),
        }
    }

    /// True if `retry`'s contents are to be tried again now (none: false). Its files are
    /// looked at off the runtime (a `stat` may block, on a network file system say) for at
    /// most [`FILE_READ_TIMEOUT`], as an update waits for the files it reads: a look that
    /// takes longer is not due, and is waited for no more, but taken at a later look once it
    /// ends.
    async fn due(retry: Option<&mut Self>) -> bool {
        let Some(retry) = retry else {
            return false;
        };
        let Some(files) = &retry.files else {
            return true;
        };
        let files = files.clone();
        match retry
            .looks
            .call(FILE_READ_TIMEOUT, move || files.may_have_changed())
            .await
        {
            Called::Answered(changed) | Called::AnsweredLate(changed) => changed,
            Called::Unanswered => false,
            // A look that failed says nothing: try again.
            Called::Failed(_) => true,
        }
    }
}

/// Why a look at or read of a file failed that had not ended after `wait`.
fn not_ended(what: &str, wait: Duration) -> String {
    format!(
        "an attempt to {what} had not ended after {} s (a slow or unreachable file system?)",
        wait.as_secs()
    )
}

/// The watched config file's contents, read as [`Config::read_file`] reads it by one of `reads`
/// (off the runtime, waited for at most [`FILE_READ_TIMEOUT`]), or why it cannot be read.
/// `None`: what came is the answer of a read begun at an earlier look that had not ended in its
/// time, perhaps older than the last look at the file; the file is to be read again.
async fn read_config_file(
    path: &Path,
    reads: &mut OneAtATime<Result<Vec<u8>, String>>,
) -> Option<Result<Vec<u8>, String>> {
    let path = path.to_owned();
    match reads
        .call(FILE_READ_TIMEOUT, move || {
            crate::config::read_config_file(&path)
        })
        .await
    {
        Called::Answered(read) => Some(read),
        Called::AnsweredLate(_) => None,
        Called::Unanswered => Some(Err(not_ended("read it", FILE_READ_TIMEOUT))),
        Called::Failed(why) => Some(Err(format!("its read failed: {why}"))),
    }
}

impl Config {
    /// [`Config::read_file`], on a thread of its own, waiting at most 10 s for it (the wait of
    /// a config update for the files it reads): a read that has not ended by then (a network
    /// file system that does not answer) is an error that says so, in words that follow
    /// "cannot read `path`: ", and is left to end on its own; it holds no thread of the
    /// runtime. The proxy's own start-up reads its config file so.
    pub async fn read_file_within(path: &Path) -> Result<String, String> {
        let path = path.to_owned();
        match OneAtATime::default()
            .call(FILE_READ_TIMEOUT, move || Config::read_file(&path))
            .await
        {
            Called::Answered(read) | Called::AnsweredLate(read) => read,
            Called::Unanswered => Err(not_ended("read it", FILE_READ_TIMEOUT)),
            Called::Failed(why) => Err(format!("its read failed: {why}")),
        }
    }
}

/// A change of the watched config file written in place, waiting to stay the same for
/// [`CONFIG_FILE_SETTLE`].
struct Settling {
    stamp: Option<Stamp>,
    contents: Vec<u8>,
    /// When the file was first seen so.
    since: Instant,
}

impl Settling {
    /// True if the file, seen now with `stamp` and `contents`, has stayed so for
    /// [`CONFIG_FILE_SETTLE`]; else, if it is new, `settling` starts over from it.
    fn settled(settling: &mut Option<Self>, stamp: Option<Stamp>, contents: &[u8]) -> bool {
        match settling {
            Some(seen) if seen.stamp == stamp && seen.contents == contents => {
                seen.since.elapsed() >= CONFIG_FILE_SETTLE
            }
            _ => {
                *settling = Some(Self {
                    stamp,
                    contents: contents.to_vec(),
                    since: Instant::now(),
                });
                false
            }
        }
    }
}

/// Why a proxy did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A listener's or the admin API's address could not be bound.
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        /// The listener (`admin` for the admin API).
        listener: String,
        /// Its address.
        address: SocketAddr,
        /// The system's reason.
        source: Arc<std::io::Error>,
    },
    /// The worker threads (see [`ProxyBuilder::workers`]) could not be started.
    #[error("cannot start the worker threads: {0}")]
    Workers(Arc<std::io::Error>),
}

/// Why an update of a running proxy was refused. The running config is untouched.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The new config is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The update names a resource that does not exist.
    #[error("no {kind} named `{name}`")]
    NotFound {
        /// `route config`, `cluster`, `listener`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The resource cannot be removed while others use it.
    #[error("{kind} `{name}` is in use by {users}")]
    InUse {
        /// `cluster`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Who uses it.
        users: String,
    },
    /// A new listener's address could not be bound.
    #[error("listener {listener}: cannot bind {address}: {source}")]
    Bind {
        /// The listener.
        listener: String,
        /// Its address.
        address: SocketAddr,
        /// The system's reason.
        source: Arc<std::io::Error>,
    },
}

impl UpdateError {
    /// True if the same config may apply when tried again, as the world outside it changes: an
    /// address in use may be freed; a file it names may come, or change (one copied after the
    /// config naming it, a certificate and its key replaced one after the other, a network file
    /// system that answers again).
    fn may_apply_later(&self) -> bool {
        match self {
            Self::Bind { .. } => true,
            Self::Invalid(err) => err.comes_from_a_file(),
            _ => false,
        }
    }
}

impl From<UpdateError> for StartError {
    fn from(err: UpdateError) -> Self {
        match err {
            UpdateError::Bind {
                listener,
                address,
                source,
            } => StartError::Bind {
                listener,
                address,
                source,
            },
            UpdateError::Invalid(err) => StartError::Config(err),
            other => StartError::Config(ConfigError::new("", other.to_string())),
        }
    }
}

/// What an update changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadSummary {
    /// Route configs added or replaced, with their new versions.
    pub route_configs: Vec<(String, u64)>,
    /// Clusters added or changed, with their new snapshot versions.
    pub clusters: Vec<(String, u64)>,
    /// Listeners added or changed, with their addresses.
    pub listeners: Vec<(String, SocketAddr)>,
    /// What was removed (`listener x`, `route config y`, `cluster z`).
    pub removed: Vec<String>,
}

impl ReloadSummary {
    /// True if the update changed nothing.
    pub fn is_empty(&self) -> bool {
        self.route_configs.is_empty()
            && self.clusters.is_empty()
            && self.listeners.is_empty()
            && self.removed.is_empty()
    }
}

/// Whether a proxy serves (what `/ready` and `/server_info` say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Live,
    /// The config is not applied yet.
    Starting,
    /// Shutdown began.
    Draining,
    /// Listeners wait for their route configs or clusters from a dynamic source.
    Warming,
    /// `/healthcheck/fail` was called.
    FailingHealthChecks,
}

impl Readiness {
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Starting => "starting",
            Self::Draining => "draining",
            Self::Warming => "warming",
            Self::FailingHealthChecks => "failing_health_checks",
        }
    }

    /// Why the proxy is not ready.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Live => "it is",
            Self::Starting => "starting: the config is not applied yet",
            Self::Draining => "draining: the proxy is shutting down",
            Self::Warming => "warming: listeners wait for dynamic route configs or clusters",
            Self::FailingHealthChecks => {
                "failing health checks on request (POST /healthcheck/ok to undo)"
            }
        }
    }
}

/// Options for starting a [`Proxy`].
pub struct ProxyBuilder {
    config: Config,
    codecs: CodecRegistry,
    filters: FilterRegistry,
    drain_time: Option<Duration>,
    sources: DynamicSources,
    config_source: String,
    log_control: Option<Arc<dyn LogControl>>,
    workers: Option<usize>,
    linger: Duration,
    /// `None`: [`BusyPoll::by_default`], which reads the kernel's settings when the proxy starts.
    busy_poll: Option<Duration>,
}

impl std::fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("config_source", &self.config_source)
            .finish_non_exhaustive()
    }
}

impl ProxyBuilder {
    /// The protocols listeners and clusters may name.
    pub fn codecs(mut self, codecs: CodecRegistry) -> Self {
        self.codecs = codecs;
        self
    }

    /// The filters listeners may name (defaults to the built-in ones).
    pub fn filters(mut self, filters: FilterRegistry) -> Self {
        self.filters = filters;
        self
    }

    /// How long connections keep serving once shutdown begins, whatever the config (and later
    /// reloads of it) say in `drain_time`.
    pub fn drain_time(mut self, drain_time: Duration) -> Self {
        self.drain_time = Some(drain_time);
        self
    }

    /// Where the config came from, as `/server_info` shows it (`file:/etc/proxy.yaml`;
    /// `embedded` by default).
    pub fn config_source(mut self, source: impl Into<String>) -> Self {
        self.config_source = source.into();
        self
    }

    /// What `/logging` reads and changes the log levels through (without it, `/logging` answers
    /// 501).
    pub fn log_control(mut self, control: Arc<dyn LogControl>) -> Self {
        self.log_control = Some(control);
        self
    }

    /// Serves client connections on `count` threads of the proxy's own (at least one), each
    /// running a single-threaded runtime that keeps a connection, the upstream connections its
    /// requests use and their timers on one core: the proxy then scales with its workers, where
    /// on a work-stealing runtime threads keep waking each other. Without it, connections are
    /// served on the runtime that starts the proxy. The accept loops, the admin API, health
    /// checks and updates run there either way.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = Some(count);
        self
    }

    /// The longest a worker whose clients pipeline requests waits before it next polls its
    /// sockets, to gather more requests and answers per system call (default
    /// [`DEFAULT_LINGER`]; zero never waits). A worker waits only while its clients' reads carry
    /// two to 31 requests on average: a client that waits for each answer before it sends the
    /// next request is never delayed. Nor are clients whose calls go round in under 400 µs
    /// (the calls they have in flight over the rate they arrive at; a few calls in flight a
    /// connection on a fast network), whom a wait costs more calls a second than it wins; nor
    /// does a worker wait while busy processes share its core (it waited to run a tenth of the
    /// time or more), which would sit idle while they wait on it. Otherwise a worker waits a
    /// tenth of the round trip, up to `longest`.
    pub fn linger(mut self, longest: Duration) -> Self {
        self.linger = longest;
        self
    }

    /// How long a worker about to sleep until its sockets have news first looks at them without
    /// sleeping, glancing at them again and again and yielding its core in between (default
    /// [`DEFAULT_BUSY_POLL`](crate::DEFAULT_BUSY_POLL), and then, where the kernel polls as long
    /// when a core idles ([`kernel_idle_poll`](crate::kernel_idle_poll)), only while busy
    /// processes share the worker's core; zero never looks). A glance is the worker's own poll of
    /// its sockets without a wait. A wake-up from sleep costs a call tens of microseconds on an
    /// idle core; a worker keeps looking only while looks find news at least eight times as often
    /// as they use up the whole budget, so it stops looking when its clients think between calls
    /// or its upstreams are far. A worker that lingers does not also look. Told a budget, a
    /// worker looks whatever the kernel does.
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.busy_poll = Some(budget);
        self
    }

    /// A source of dynamic resources, serving the part of the config's `dynamic` section named
    /// [`DynamicSource::name`] (the `metaprotocol-xds` crate's client serves `xds`). A config
    /// naming a source that is not registered is rejected.
    pub fn dynamic_source(mut self, source: impl DynamicSource) -> Self {
        self.sources.insert(Arc::new(source));
        self
    }

    /// Checks that the config can be built with these codecs, filters and dynamic sources
    /// (everything but binding). Call it within a Tokio runtime when filters or tracing need
    /// one.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.checking_state().check(&self.config)
    }

    /// Compiles the config's route tables as [`check`](Self::check) does and keeps them, to ask
    /// which route a request would take on each listener (see [`RouteCheck`]).
    pub fn route_check(&self) -> Result<RouteCheck, ConfigError> {
        self.checking_state().route_check(&self.config)
    }

    /// An empty proxy state to check the config against, with the config's metrics settings
    /// (they shape the series its parts register).
    fn checking_state(&self) -> ProxyState {
        let initial = Config {
            metrics: self.config.metrics.clone(),
            ..Config::default()
        };
        self.state(initial)
    }

    fn state(&self, initial: Config) -> ProxyState {
        let mut state = ProxyState::new(initial, self.codecs.clone(), self.filters.clone());
        state.sources = self.sources.clone();
        state.drain_override = self.drain_time;
        state.config_source = self.config_source.clone();
        state.log_control = self.log_control.clone();
        state
    }

    /// Builds everything, binds every listener and the admin API, and starts serving, then
    /// starts the dynamic sources. Nothing is bound unless the whole config is valid. Listeners
    /// whose route config (or its clusters) come from a dynamic source are bound when those
    /// arrive.
    pub async fn start(self) -> Result<Proxy, StartError> {
        self.config.validate()?;
        self.sources.check(self.config.dynamic.as_ref())?;
        let admin =
            match &self.config.admin {
                Some(spec) => Some(TcpListener::bind(spec.address).await.map_err(|source| {
                    StartError::Bind {
                        listener: "admin".to_owned(),
                        address: spec.address,
                        source: Arc::new(source),
                    }
                })?),
                None => None,
            };
        let initial = Config {
            admin: self.config.admin.clone(),
            dynamic: self.config.dynamic.clone(),
            metrics: self.config.metrics.clone(),
            ..Config::default()
        };
        let mut state = self.state(initial);
        if let Some(count) = self.workers {
            let root = state.metrics.root();
            let lingered = root.counter(
                "worker_lingers",
                "Times a worker whose clients pipeline waited before polling its sockets",
            );
            let lingered_for = root.histogram(
                "worker_linger_seconds",
                "How long workers whose clients pipeline waited before polling their sockets",
                &LINGER_BUCKETS,
            );
            let looks = root.counter(
                "worker_busy_polls",
                "Times a worker about to sleep first looked at its sockets without sleeping",
            );
            let misses = root.counter(
                "worker_busy_poll_misses",
                "Busy polls that found no news within their budget",
            );
            let parking = Parking {
                linger: Linger::new(self.linger, lingered, lingered_for),
                busy_poll: match self.busy_poll {
                    Some(budget) => BusyPoll::new(budget, looks, misses),
                    None => BusyPoll::by_default(looks, misses),
                },
            };
            let workers = Workers::start(count, &parking)
                .map_err(|err| StartError::Workers(Arc::new(err)))?;
            state.listeners.workers = Some(workers);
        }
        let state = Arc::new(state);
        let dynamic = self.config.dynamic.clone();
        state
            .apply_uncounted(Source::File, |layers, _| {
                layers.base = self.config.clone();
                Ok(())
            })
            .await?;
        let admin = admin.map(|listener| {
            let address = listener.local_addr().ok();
            let task = tokio::spawn(crate::admin::serve(
                listener,
                state.clone(),
                state.admin_stop.clone(),
            ));
            *lock(&state.admin_task) = Some(task);
            address
        });
        state.ready.store(true, Ordering::Release);
        let proxy = Proxy {
            state,
            admin: admin.flatten(),
        };
        proxy.state.sources.start(&proxy, dynamic.as_ref());
        Ok(proxy)
    }
}

/// A running proxy. Cheap to clone: clones are handles to the same proxy. Dropping the handles
/// does not stop it; call [`Proxy::shutdown`].
#[derive(Clone, Debug)]
pub struct Proxy {
    state: Arc<ProxyState>,
    admin: Option<SocketAddr>,
}

pub(crate) struct ProxyState {
    /// The running config, republished with every accepted update.
    config: ArcSwap<Config>,
    /// The layers the running config is composed of; locked for the whole of an update, which
    /// serialises updates.
    updates: tokio::sync::Mutex<Updates>,
    /// The threads reading updates' files, bounded (see [`FileReaders`]).
    file_readers: FileReaders,
    /// The state of dynamic resources and of what waits for them.
    statuses: StatusRegistry,
    /// The dynamic sources the embedder registered.
    sources: DynamicSources,
    /// True while a listener of the config waits for dynamic resources (it is not bound).
    listeners_waiting: AtomicBool,
    codecs: CodecRegistry,
    filters: FilterRegistry,
    shared: SharedClients,
    metrics: Metrics,
    clusters: ClusterManager,
    /// Requests in flight and answers waiting, across every connection.
    load: Arc<Load>,
    /// How connections drain: the drain time in force, and the order to end drains at once.
    drain: Arc<DrainPolicy>,
    routes: Mutex<BTreeMap<String, Arc<RouteSlot>>>,
    listeners: ListenerManager,
    /// Route configs and clusters last changed through the API (a file reload warns before
    /// replacing them).
    api_touched: Mutex<BTreeSet<String>>,
    /// The drain time set by the embedder, over the config's.
    drain_override: Option<Duration>,
    /// False until started and again from the moment shutdown begins.
    ready: AtomicBool,
    /// Set by `/healthcheck/fail`, cleared by `/healthcheck/ok`: `/ready` answers 503 while set
    /// (Envoy's manual drain switch, for load balancers that poll readiness).
    health_check_failed: AtomicBool,
    /// When the proxy was made, for `/server_info`.
    started: (SystemTime, Instant),
    /// Where the config came from, for `/server_info`.
    config_source: String,
    /// The config file watched, if one is, and what became of its changes.
    config_file: Mutex<Option<ConfigFileStatus>>,
    log_control: Option<Arc<dyn LogControl>>,
    access_logs: access_log::Sinks,
    span_sinks: trace::SpanSinks,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    admin_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tracker: TaskTracker,
    updates_applied: Counter,
    updates_rejected: Counter,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ProxyState {
    fn new(config: Config, codecs: CodecRegistry, filters: FilterRegistry) -> Self {
        let metrics = Metrics::with_settings(MetricsSettings::from(&config.metrics));
        let reloads = |outcome: &str| {
            metrics.root().counter_with(
                "config_reloads",
                "Config updates (file reloads, admin and embedding API changes), by outcome",
                &[("outcome", outcome)],
            )
        };
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let load = Arc::new(Load::new(&metrics.root(), &config.limits));
        Self {
            updates_applied: reloads("applied"),
            updates_rejected: reloads("rejected"),
            updates: tokio::sync::Mutex::new(Updates::new(Layers {
                base: config.clone(),
                ..Layers::default()
            })),
            file_readers: FileReaders::default(),
            config: ArcSwap::from_pointee(config),
            statuses: StatusRegistry::default(),
            sources: DynamicSources::default(),
            listeners_waiting: AtomicBool::new(false),
            codecs,
            filters,
            shared: SharedClients::default(),
            metrics,
            clusters: ClusterManager::default(),
            load,
            drain: Arc::default(),
            routes: Mutex::new(BTreeMap::new()),
            listeners: ListenerManager::new(shutdown.clone(), tracker.clone()),
            api_touched: Mutex::new(BTreeSet::new()),
            drain_override: None,
            ready: AtomicBool::new(false),
            health_check_failed: AtomicBool::new(false),
            config_file: Mutex::new(None),
            started: (SystemTime::now(), Instant::now()),
            config_source: "embedded".to_owned(),
            log_control: None,
            access_logs: access_log::Sinks::default(),
            span_sinks: trace::SpanSinks::default(),
            shutdown,
            admin_stop: CancellationToken::new(),
            admin_task: Mutex::new(None),
            tracker,
        }
    }

    fn builder(&self) -> Builder<'_> {
        Builder {
            codecs: &self.codecs,
            filters: &self.filters,
            metrics: &self.metrics,
            shared: &self.shared,
            load: &self.load,
            drain: &self.drain,
            access_logs: &self.access_logs,
            span_sinks: &self.span_sinks,
        }
    }

    fn lock_routes(&self) -> MutexGuard<'_, BTreeMap<String, Arc<RouteSlot>>> {
        lock(&self.routes)
    }

    fn lock_api_touched(&self) -> MutexGuard<'_, BTreeSet<String>> {
        lock(&self.api_touched)
    }

    /// Counts an update that was applied or rejected.
    pub(crate) fn count_update(&self, applied: bool) {
        if applied {
            self.updates_applied.inc();
        } else {
            self.updates_rejected.inc();
        }
    }

    /// How long connections keep serving once shutdown begins.
    pub(crate) fn drain_time(&self, config: &Config) -> Duration {
        self.drain_override.unwrap_or(config.drain_time)
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every dynamic resource's status, and every resource of the file that waits for one.
    pub(crate) fn dynamic_statuses(&self) -> Vec<ResourceStatus> {
        self.statuses.all()
    }

    /// Every dynamic source's own state, by name.
    /// The watched config file's status, if one is watched.
    pub(crate) fn config_file_status(&self) -> Option<ConfigFileStatus> {
        lock(&self.config_file).clone()
    }

    /// Records what became of a change of the watched config file.
    fn config_file_changed(&self, change: impl FnOnce(&mut ConfigFileStatus)) {
        if let Some(status) = lock(&self.config_file).as_mut() {
            change(status);
        }
    }

    pub(crate) fn source_statuses(&self) -> serde_json::Map<String, serde_json::Value> {
        self.sources.status()
    }

    /// Whether the proxy serves, and if not why.
    pub(crate) fn readiness(&self) -> Readiness {
        if self.shutdown.is_cancelled() {
            Readiness::Draining
        } else if !self.ready.load(Ordering::Acquire) {
            Readiness::Starting
        } else if self.listeners_waiting.load(Ordering::Acquire) {
            Readiness::Warming
        } else if self.health_check_failed.load(Ordering::Acquire) {
            Readiness::FailingHealthChecks
        } else {
            Readiness::Live
        }
    }

    /// Fails (`true`) or passes `/ready` on request.
    pub(crate) fn fail_health_checks(&self, fail: bool) {
        self.health_check_failed.store(fail, Ordering::Release);
    }

    /// When the proxy was made: wall-clock, and how long ago.
    pub(crate) fn started(&self) -> (SystemTime, Duration) {
        (self.started.0, self.started.1.elapsed())
    }

    /// Where the config came from.
    pub(crate) fn config_source(&self) -> &str {
        &self.config_source
    }

    pub(crate) fn log_control(&self) -> Option<&Arc<dyn LogControl>> {
        self.log_control.as_ref()
    }

    /// Every route config's version.
    pub(crate) fn route_versions(&self) -> Vec<(String, u64)> {
        self.lock_routes()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.table.load().version()))
            .collect()
    }

    pub(crate) fn cluster_statuses(&self) -> Vec<ClusterStatus> {
        self.clusters.all().values().map(|c| c.status()).collect()
    }

    pub(crate) async fn update_route_config(
        &self,
        spec: RouteConfigSpec,
    ) -> Result<u64, UpdateError> {
        let name = spec.name.clone();
        let mut at = String::new();
        self.apply(Source::Api, |layers, _| {
            refuse_dynamic(layers, ResourceKind::RouteConfig, &spec.name)?;
            let (i, entry) = layers
                .base
                .route_configs
                .iter_mut()
                .enumerate()
                .find(|(_, r)| r.name == spec.name)
                .ok_or_else(|| UpdateError::NotFound {
                    kind: "route config",
                    name: spec.name.clone(),
                })?;
            at = format!("route_configs[{i}]");
            *entry = spec.clone();
            Ok(())
        })
        .await
        .map_err(|err| in_own_terms(err, &at))?;
        Ok(self
            .lock_routes()
            .get(&name)
            .map_or(0, |slot| slot.table.load().version()))
    }

    pub(crate) async fn update_cluster(&self, spec: ClusterSpec) -> Result<u64, UpdateError> {
        let name = spec.name.clone();
        let spec = Arc::new(spec);
        let mut at = String::new();
        self.apply(Source::Api, |layers, _| {
            refuse_dynamic(layers, ResourceKind::Cluster, &spec.name)?;
            let clusters = &mut layers.base.clusters;
            let i = match clusters.iter().position(|c| c.name == spec.name) {
                Some(i) => i,
                None => {
                    clusters.push(spec.clone());
                    clusters.len() - 1
                }
            };
            at = format!("clusters[{i}]");
            clusters[i] = spec.clone();
            Ok(())
        })
        .await
        .map_err(|err| in_own_terms(err, &at))?;
        Ok(self
            .clusters
            .get(&name)
            .map_or(0, |handle| handle.snapshot().version))
    }

    pub(crate) async fn remove_cluster(&self, name: &str) -> Result<(), UpdateError> {
        self.apply(Source::Api, |layers, running| {
            refuse_dynamic(layers, ResourceKind::Cluster, name)?;
            if layers.base.cluster(name).is_none() {
                return Err(UpdateError::NotFound {
                    kind: "cluster",
                    name: name.to_owned(),
                });
            }
            let users = cluster_users(running, name);
            if !users.is_empty() {
                return Err(UpdateError::InUse {
                    kind: "cluster",
                    name: name.to_owned(),
                    users: format!("route configs {users:?}"),
                });
            }
            layers.base.clusters.retain(|c| c.name != name);
            Ok(())
        })
        .await
        .map(|_| ())
    }
}

/// `err` with its field's position in `text`, the config it was found in.
fn located_in(err: UpdateError, text: &str) -> UpdateError {
    match err {
        UpdateError::Invalid(err) => UpdateError::Invalid(err.located_in(text)),
        other => other,
    }
}

/// `err` in the terms of the resource at `at` (`route_configs[2]`) when it is about that
/// resource (`routes[0].route.cluster`): the terms of the one resource its author sent, not of
/// the running config's lists.
fn in_own_terms(err: UpdateError, at: &str) -> UpdateError {
    match err {
        UpdateError::Invalid(mut err) if !at.is_empty() => {
            if let Some(rest) = err
                .field
                .strip_prefix(at)
                .filter(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            {
                err.field = rest.strip_prefix('.').unwrap_or(rest).to_owned();
            }
            UpdateError::Invalid(err)
        }
        other => other,
    }
}

/// Refuses an API change of a resource a dynamic source provides: the source would undo it.
fn refuse_dynamic(layers: &Layers, kind: ResourceKind, name: &str) -> Result<(), UpdateError> {
    if layers.dynamic.provides(kind, name) {
        return Err(ConfigError::new(
            "name",
            format!(
                "{} `{name}` comes from the dynamic source; change it there",
                kind.name()
            ),
        )
        .into());
    }
    Ok(())
}

/// The route configs of `config` whose routes send to cluster `name`.
fn cluster_users(config: &Config, name: &str) -> Vec<String> {
    config
        .route_configs
        .iter()
        .filter(|r| {
            r.routes
                .iter()
                .any(|route| route.clusters().any(|c| c == name))
        })
        .map(|r| r.name.clone())
        .collect()
}

impl Proxy {
    /// Starts a proxy with `codecs` and the built-in filters; see [`ProxyBuilder::start`].
    pub async fn start(config: Config, codecs: CodecRegistry) -> Result<Self, StartError> {
        Self::builder(config).codecs(codecs).start().await
    }

    /// A builder for more options.
    pub fn builder(config: Config) -> ProxyBuilder {
        ProxyBuilder {
            config,
            codecs: CodecRegistry::new(),
            filters: FilterRegistry::with_builtins(),
            drain_time: None,
            sources: DynamicSources::default(),
            config_source: "embedded".to_owned(),
            log_control: None,
            workers: None,
            linger: DEFAULT_LINGER,
            busy_poll: None,
        }
    }

    /// The bound address of listener `name` (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state.listeners.address(name)
    }

    /// Every listener's name and bound address.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.state.listeners.addresses()
    }

    /// The admin API's bound address, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The proxy's metrics: render them, or register them into your own registry with
    /// [`Metrics::collector`].
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The running config (with every accepted update applied).
    pub fn config(&self) -> Config {
        Config::clone(&self.state.config())
    }

    /// Every cluster's endpoints and their health, as `/clusters` shows them.
    pub fn clusters(&self) -> Vec<ClusterStatus> {
        self.state.cluster_statuses()
    }

    /// Makes every access log writer close and reopen its file before its next line: call it
    /// after logrotate moved the files (the `metaprotocol-proxy` binary does on SIGHUP).
    pub fn reopen_access_logs(&self) {
        self.state.access_logs.reopen_all();
    }

    /// Replaces route config `spec.name` without closing a connection or failing a request in
    /// flight (those finish on the table they started with). Returns the new version. On error
    /// the running table is untouched; an error about `spec` names its field as in `spec`
    /// (`routes[0].route.cluster`).
    pub async fn update_route_config(&self, spec: RouteConfigSpec) -> Result<u64, UpdateError> {
        self.state.update_route_config(spec).await
    }

    /// Adds cluster `spec.name`, or replaces its config: endpoints that stay keep their
    /// connections, requests in flight finish on the snapshot they started with. Returns the
    /// cluster's new snapshot version. An error about `spec` names its field as in `spec`
    /// (`lb_policy`).
    pub async fn update_cluster(&self, spec: ClusterSpec) -> Result<u64, UpdateError> {
        self.state.update_cluster(spec).await
    }

    /// Removes cluster `name`; refused while a route config sends to it.
    pub async fn remove_cluster(&self, name: &str) -> Result<(), UpdateError> {
        self.state.remove_cluster(name).await
    }

    /// Adds listener `spec` (its route config must exist) and returns its bound address; a
    /// listener of the same name is replaced (its connections drain if the address changed).
    pub async fn add_listener(&self, spec: ListenerSpec) -> Result<SocketAddr, UpdateError> {
        let name = spec.name.clone();
        self.state
            .apply(Source::Api, |layers, _| {
                let listeners = &mut layers.base.listeners;
                match listeners.iter_mut().find(|l| l.name == spec.name) {
                    Some(entry) => *entry = spec.clone(),
                    None => listeners.push(spec.clone()),
                }
                Ok(())
            })
            .await?;
        self.state
            .listener_address(&name)
            .ok_or(UpdateError::NotFound {
                kind: "listener",
                name,
            })
    }

    /// Removes listener `name`: it stops accepting and its connections drain, without touching
    /// other listeners.
    pub async fn remove_listener(&self, name: &str) -> Result<(), UpdateError> {
        self.state
            .apply(Source::Api, |layers, _| {
                let listeners = &mut layers.base.listeners;
                if !listeners.iter().any(|l| l.name == name) {
                    return Err(UpdateError::NotFound {
                        kind: "listener",
                        name: name.to_owned(),
                    });
                }
                listeners.retain(|l| l.name != name);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Applies a whole new config: clusters, route configs and listeners that changed are
    /// added, replaced or removed, hitlessly. All or nothing: on error the running config is
    /// untouched. Only the admin address needs a restart.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, UpdateError> {
        self.state
            .apply(Source::File, |layers, _| {
                layers.base = config.clone();
                Ok(())
            })
            .await
    }

    /// Applies an update from a dynamic source: its clusters and route configs are added,
    /// replaced or removed, all or nothing, without closing a connection or failing a request
    /// in flight. They form a layer of their own over the file's config (a reload of the file
    /// keeps them); a name may not be in both. A route config serves once its clusters exist
    /// (a listener once its route config does), the running version of one serving meanwhile;
    /// a removed resource still in use is kept until nothing uses it. Errors name the resource
    /// (`clusters[<name>].lb_policy`); `/config_dump` shows each resource's version, last update
    /// and last error.
    pub async fn apply_dynamic(&self, update: DynamicUpdate) -> Result<ReloadSummary, UpdateError> {
        self.state
            .apply(Source::Dynamic(&update), |layers, _| {
                let dynamic = &mut layers.dynamic;
                for id in &update.removed {
                    match id.kind {
                        ResourceKind::Cluster => {
                            dynamic.clusters.remove(&id.name);
                        }
                        ResourceKind::RouteConfig => {
                            dynamic.route_configs.remove(&id.name);
                        }
                        _ => {}
                    }
                }
                for spec in &update.clusters {
                    dynamic
                        .clusters
                        .insert(spec.name.clone(), Arc::new(spec.clone()));
                }
                for spec in &update.route_configs {
                    dynamic
                        .route_configs
                        .insert(spec.name.clone(), spec.clone());
                }
                Ok(())
            })
            .await
    }

    /// Records that a dynamic source rejected `version` of resource `id` before applying it
    /// (it could not be translated, say), for `/config_dump`; counted as a rejected update.
    pub fn reject_dynamic(&self, id: &ResourceId, version: Option<&str>, error: &str) {
        self.state.statuses.rejected(id, version, error.to_owned());
        self.state.count_update(false);
    }

    /// Every dynamic resource's status (version, last update, last error, whether it serves),
    /// and every resource of the file that waits for one, as `/config_dump` shows them.
    pub fn dynamic_resources(&self) -> Vec<ResourceStatus> {
        self.state.dynamic_statuses()
    }

    /// What became of the changes of the config file [`Proxy::watch_file`] watches (`None`
    /// when none is watched), as `/config_dump` shows it.
    pub fn config_file_status(&self) -> Option<ConfigFileStatus> {
        self.state.config_file_status()
    }

    /// Resolves once shutdown begins: dynamic sources stop then.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.state.shutdown.clone().cancelled_owned()
    }

    /// [`Proxy::reload`] from the text of a config file; a file that does not parse is rejected
    /// (and counted) like any other invalid config. An error found while building the new
    /// config (a filter's config, say) is placed in the text too. A text without any content
    /// (empty, or only comments) is rejected too: it is what a file holds while an editor
    /// rewrites it (truncated, then written), and applying it would remove every listener.
    pub async fn reload_yaml(&self, text: &str) -> Result<ReloadSummary, UpdateError> {
        if crate::config::is_blank(text) {
            self.state.count_update(false);
            return Err(ConfigError::new(
                "",
                "the file is empty (being written?); write `listeners: []` to serve nothing",
            )
            .into());
        }
        match Config::from_yaml(text) {
            Ok(config) => self
                .reload(config)
                .await
                .map_err(|err| located_in(err, text)),
            Err(err) => {
                self.state.count_update(false);
                Err(err.into())
            }
        }
    }

    /// Applies `text` again, the config file's contents the watcher last rejected with
    /// `rejected` for what may change outside it (see [`Proxy::watch_file`]); counts the
    /// update, unless it is rejected again the same way: a rejection that lasts counts once.
    async fn retry_yaml(&self, text: &str, rejected: &str) -> Result<ReloadSummary, UpdateError> {
        let config = Config::from_yaml(text)?;
        let retried = self
            .state
            .apply_uncounted(Source::File, |layers, _| {
                layers.base = config.clone();
                Ok(())
            })
            .await
            .map_err(|err| located_in(err, text));
        match &retried {
            Err(err) if err.to_string() == rejected => {}
            outcome => self.state.count_update(outcome.is_ok()),
        }
        retried
    }

    /// Looks at the config file at `path` every `poll` and applies it whenever its contents
    /// change (see [`Proxy::reload`]), logging what changed or why it was rejected (a file
    /// rejected because an address could not be bound, or a file it names was not read in
    /// time, is tried again at every look; one rejected because a file it names is missing,
    /// unreadable or refused, once one of the files its update read may have changed; a
    /// rejection that lasts counts once); returns
    /// when the proxy shuts down. Polling, rather than file events, also sees files replaced by
    /// rename, as editors and Kubernetes ConfigMaps do. A look costs a `stat`: the file is read
    /// only when its metadata changed, or may not show a change yet (it changed within
    /// the last 2 s, below the resolution of some file systems' timestamps). The file is read
    /// as [`Config::read_file`] reads it: one larger than [`crate::MAX_CONFIG_FILE_BYTES`], or
    /// no regular file (a FIFO, a device), is rejected unread, said once, until it can be read.
    /// So is one whose look or read has not ended after 10 s (the wait of an update for the
    /// files it reads: a network file system that does not answer): the watcher goes on looking, starts no other look or
    /// read while that one waits, takes its answer once it comes, and returns at shutdown
    /// without waiting for it.
    ///
    /// A file renamed over the path, or over a symlink in its directory the path goes through
    /// (a ConfigMap's `..data`), is applied at the next look: it was whole before it appeared.
    /// On Linux, inotify on the path's directory tells how a new file came; polling still finds
    /// it. Any other change is applied only once the file has stayed the same for
    /// [`CONFIG_FILE_SETTLE`]: a file written in place (`cp`, an editor that truncates and
    /// writes), one created anew at the path (vim moves the old one aside and writes a new
    /// one), and one whose arrival went unreported (no inotify; a network file system written
    /// from another machine). A look in the middle of a write may find a prefix that is a
    /// valid config of its own (the first of two listeners, say).
    ///
    /// The file as the watch first reads it is taken for the config the proxy runs: a proxy
    /// started from the file's contents read earlier watches it with
    /// [`Proxy::watch_file_started_with`], so that a change made in between is applied too.
    pub async fn watch_file(&self, path: &Path, poll: Duration) {
        self.watch(path, poll, None).await;
    }

    /// Watches the config file at `path` as [`Proxy::watch_file`] does, for a proxy started
    /// from `started_with`, the file's contents read at start: a change made to the file after
    /// that read, before the watch began, is applied at the watch's first look (read anew by
    /// the watch, it would be taken for what the proxy runs, and never applied).
    pub async fn watch_file_started_with(
        &self,
        path: &Path,
        poll: Duration,
        started_with: Vec<u8>,
    ) {
        self.watch(path, poll, Some(started_with)).await;
    }

    /// See [`Proxy::watch_file`]; `started_with`, if any, is what the proxy runs.
    async fn watch(&self, path: &Path, poll: Duration, started_with: Option<Vec<u8>>) {
        // Looked at before it is read, so that a write after the read shows in the next look.
        let shutdown = self.state.shutdown.clone();
        let arrivals = tokio::select! {
            _ = shutdown.cancelled() => return,
            arrivals = Arrivals::watch(path) => arrivals,
        };
        // Each look at and read of the file runs off the runtime, one at a time, and is waited
        // for at most FILE_READ_TIMEOUT: on a file system that does not answer, the watcher
        // says so and keeps looking, and holds one thread for each, not one a look.
        let mut looks = OneAtATime::default();
        let mut reads = OneAtATime::default();
        let (mut look, mut applied) = match started_with {
            // No look yet: the first one reads the file, and applies it if it is not what the
            // proxy runs.
            Some(started_with) => (Look::default(), Some(started_with)),
            None => {
                let look = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    look = Look::at(path, &arrivals, &mut looks) => look.unwrap_or_default(),
                };
                let applied = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    read = read_config_file(path, &mut reads) => read.and_then(Result::ok),
                };
                (look, applied)
            }
        };
        *lock(&self.state.config_file) = Some(ConfigFileStatus::new(path.display().to_string()));
        // The last rejection of the file for what may change outside it (an address that could
        // not be bound, a file it names that could not be read).
        let mut retrying: Option<Retry> = None;
        // A change written in place, waiting to stay the same for the settle time.
        let mut settling: Option<Settling> = None;
        // Why the file was last refused unread (too large, a FIFO), said once.
        let mut refused: Option<String> = None;
        loop {
            tokio::select! {
                _ = self.state.shutdown.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
            let now = tokio::select! {
                _ = shutdown.cancelled() => return,
                now = Look::at(path, &arrivals, &mut looks) => now,
            };
            let before = match now {
                Ok(now) => std::mem::replace(&mut look, now),
                Err(why) => {
                    self.refuse_unread(path, why, &mut refused, &mut applied);
                    look = Look::default();
                    continue;
                }
            };
            // Read only when its metadata says it changed, or may not say so yet; and while a
            // change waits to settle, or to be tried again once what it waits for may be there.
            if look.shows_no_change_since(&before)
                && settling.is_none()
                && !Retry::due(retrying.as_mut()).await
            {
                continue;
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = read_config_file(path, &mut reads) => read,
            };
            let current = match read {
                Some(Ok(current)) => current,
                // A late read, perhaps older than the look: read again at the next look.
                None => {
                    look = Look::default();
                    continue;
                }
                Some(Err(why)) => {
                    // A file there but refused (larger than the bound, a FIFO, unreadable, or
                    // its read did not end) is a rejected change; one gone (being replaced) is
                    // not.
                    if look.stamp.is_some() {
                        self.refuse_unread(path, why, &mut refused, &mut applied);
                    }
                    // Read again at the next look, whatever its metadata says then.
                    look = Look::default();
                    continue;
                }
            };
            refused = None;
            let replaced = look.replaced(&before);
            if applied.as_ref() == Some(&current) {
                settling = None;
                continue;
            }
            if !replaced && !Settling::settled(&mut settling, look.stamp, &current) {
                continue;
            }
            settling = None;
            let file = path.display();
            // Text, as at start: a file that is not UTF-8 is rejected, not repaired.
            let text = match std::str::from_utf8(&current) {
                Ok(text) => text.to_owned(),
                Err(err) => {
                    applied = Some(current);
                    self.state.count_update(false);
                    tracing::warn!(%file, error = %err, "config file rejected: it is not UTF-8 text; the running config is kept");
                    self.state
                        .config_file_changed(|s| s.rejected(format!("not UTF-8 text: {err}")));
                    continue;
                }
            };
            let reloaded = match retrying.as_ref().filter(|retry| retry.contents == current) {
                Some(retry) => self.retry_yaml(&text, &retry.error).await,
                None => self.reload_yaml(&text).await,
            };
            let previous = applied.replace(current);
            match &reloaded {
                Ok(_) => self.state.config_file_changed(ConfigFileStatus::applied),
                Err(err) => self
                    .state
                    .config_file_changed(|s| s.rejected(err.to_string())),
            }
            match reloaded {
                Ok(summary) if summary.is_empty() => {
                    tracing::info!(%file, "config file reloaded: nothing changed");
                }
                Ok(summary) => {
                    for (name, version) in &summary.route_configs {
                        tracing::info!(%file, route_config = %name, version, "route config updated");
                    }
                    for (name, version) in &summary.clusters {
                        tracing::info!(%file, cluster = %name, version, "cluster updated");
                    }
                    for (name, address) in &summary.listeners {
                        tracing::info!(%file, listener = %name, %address, "listener updated; its open connections drain");
                    }
                    for removed in &summary.removed {
                        tracing::info!(%file, %removed, "removed");
                    }
                }
                // An address in use may be freed (the process holding it stops), a file named
                // may come: the same file is tried again (at the next look, or once a file it
                // read changed), and said so only once.
                Err(err) if err.may_apply_later() => {
                    let error = err.to_string();
                    if retrying.as_ref().is_none_or(|retry| retry.error != error) {
                        tracing::warn!(%file, error = %err, "config file rejected; the running config is kept, and the file tried again until it applies or changes");
                    }
                    let files = match &err {
                        UpdateError::Invalid(err) => err.files_read().cloned(),
                        _ => None,
                    };
                    retrying = applied
                        .clone()
                        .map(|contents| Retry::new(contents, error, files));
                    applied = previous;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%file, error = %err, "config file rejected; the running config is kept");
                }
            }
            retrying = None;
        }
    }

    /// Rejects the watched config file at `path`, which could not be looked at or read for
    /// `why`: counted and said once, until it reads or fails otherwise (`refused`), and what it
    /// holds once it can be read is applied, and said so (nothing is `applied`).
    fn refuse_unread(
        &self,
        path: &Path,
        why: String,
        refused: &mut Option<String>,
        applied: &mut Option<Vec<u8>>,
    ) {
        if refused.as_ref() == Some(&why) {
            return;
        }
        let file = path.display();
        self.state.count_update(false);
        tracing::warn!(%file, error = %why, "config file rejected: it cannot be read; the running config is kept");
        self.state
            .config_file_changed(|s| s.rejected(format!("cannot read: {why}")));
        *refused = Some(why);
        *applied = None;
    }

    /// Drains and stops: `/ready` answers 503 at once, listeners stop accepting, open
    /// connections keep serving for the drain time, then answer what is still in flight with
    /// the protocol's error and close. Then the access log lines still queued are written
    /// (waiting at most [`ACCESS_LOG_FLUSH_TIMEOUT`]) and the spans still queued exported. The
    /// admin API stays up until the end. Any handle may call it; the others see a stopped proxy.
    pub async fn shutdown(&self) {
        let state = &self.state;
        state.begin_shutdown();
        let drain_time = state.drain.time();
        // Connections end themselves at the drain deadline; the grace covers their last writes.
        let grace = drain_time.saturating_add(Duration::from_secs(2));
        if tokio::time::timeout(grace, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain time of {drain_time:?} passed; abandoning what is left");
        }
        state.finish_shutdown(true, ACCESS_LOG_FLUSH_TIMEOUT).await;
    }

    /// Ends the drain at once, for an embedder (or an operator, with a second signal) who will
    /// not wait for it: begins it if [`Proxy::shutdown`] has not, then every connection, of
    /// every listener, answers the calls still open with the protocol's "unavailable" error
    /// reply, as at the drain deadline (calls read but not yet started included), and closes.
    /// Waits at most [`SHUTDOWN_NOW_GRACE`] for the connections to end, then stops as
    /// [`Proxy::shutdown`] does, but for the spans not yet exported, which it does not wait
    /// for, and the access log lines still queued, which it waits for only as long again. A
    /// [`Proxy::shutdown`] under way returns once the connections are gone.
    pub async fn shutdown_now(&self) {
        let state = &self.state;
        state.begin_shutdown();
        state.drain.end_now();
        if tokio::time::timeout(SHUTDOWN_NOW_GRACE, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "connections still open {SHUTDOWN_NOW_GRACE:?} after the drain was ended; abandoning them"
            );
        }
        state.finish_shutdown(false, SHUTDOWN_NOW_GRACE).await;
    }
}

impl ProxyState {
    /// Shutdown's first steps: `/ready` says draining, the listeners stop accepting and their
    /// connections start draining.
    fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.tracker.close();
    }

    /// Shutdown's last steps, once the connections are gone (or given up on): the access log
    /// lines still queued are written (waiting at most `access_log_wait`) and, with
    /// `flush_spans`, the spans waiting for export are exported.
    async fn finish_shutdown(&self, flush_spans: bool, access_log_wait: Duration) {
        for cluster in self.clusters.all().values() {
            cluster.stop_health();
        }
        self.access_logs
            .flush_all(tokio::time::Instant::now() + access_log_wait)
            .await;
        if flush_spans {
            self.span_sinks.flush_all().await;
        }
        self.admin_stop.cancel();
        let admin = lock(&self.admin_task).take();
        if let Some(admin) = admin {
            let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
        }
    }
}
