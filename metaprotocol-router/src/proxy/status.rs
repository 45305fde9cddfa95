//! The state of dynamic resources, as `/config_dump` shows it: for each resource a dynamic
//! source provides (and each resource of the file that waits for one), the source's version of
//! what runs, when it was applied, whether it serves, warms or is kept, and why its last offered
//! version was rejected.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

/// What kind of resource a status is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResourceKind {
    /// A listener (from the config file; it may wait for dynamic resources).
    Listener,
    /// A route config.
    RouteConfig,
    /// A cluster.
    Cluster,
    /// The endpoints of a cluster, when its source sends them apart (xDS's EDS).
    Endpoints,
}

impl ResourceKind {
    /// The kind's name in the config's words (`route config`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::RouteConfig => "route config",
            Self::Cluster => "cluster",
            Self::Endpoints => "endpoints",
        }
    }
}

/// A resource: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceId {
    /// What it is.
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
}

impl ResourceId {
    /// The resource `kind` `name`.
    pub fn new(kind: ResourceKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ResourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind.name(), self.name)
    }
}

/// Whether a resource serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResourceState {
    /// It serves as its source gave it.
    Active,
    /// It waits for resources it uses (its running version, if any, serves meanwhile).
    Warming {
        /// What it waits for.
        waiting_for: String,
    },
    /// Its source removed it, but running resources still use it: it serves until they stop.
    Kept {
        /// Who still uses it.
        used_by: String,
    },
    /// Every version offered so far was rejected: it does not run.
    Rejected,
}

/// One resource's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ResourceStatus {
    /// Which resource.
    #[serde(flatten)]
    pub id: ResourceId,
    /// Whether it serves.
    #[serde(flatten)]
    pub state: ResourceState,
    /// The source's version of what runs; `None` for what no source versions (a waiting
    /// listener of the file) or was never applied.
    pub version: Option<String>,
    /// When that version was applied.
    #[serde(serialize_with = "rfc3339")]
    pub last_updated: Option<SystemTime>,
    /// Why the last version offered was rejected; cleared when a later one is applied.
    pub last_error: Option<String>,
    /// The version that was rejected.
    pub rejected_version: Option<String>,
}

/// What became of the changes of the config file a proxy watches ([`Proxy::watch_file`]), as
/// `/config_dump` shows it.
///
/// [`Proxy::watch_file`]: crate::Proxy::watch_file
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ConfigFileStatus {
    /// The file.
    pub path: String,
    /// When a change of it was last applied.
    #[serde(serialize_with = "rfc3339")]
    pub last_applied: Option<SystemTime>,
    /// Why its last change was rejected, the running config kept (with the line and column
    /// at fault when known); cleared when a later change applies.
    pub last_error: Option<String>,
    /// When that change was rejected.
    #[serde(serialize_with = "rfc3339")]
    pub last_rejected: Option<SystemTime>,
}

impl ConfigFileStatus {
    /// The status of `path`, before any change of it.
    pub(crate) fn new(path: String) -> Self {
        Self {
            path,
            ..Self::default()
        }
    }

    /// Records that a change was applied.
    pub(crate) fn applied(&mut self) {
        self.last_applied = Some(SystemTime::now());
        self.last_error = None;
        self.last_rejected = None;
    }

    /// Records that a change was rejected for `error`.
    pub(crate) fn rejected(&mut self, error: String) {
        self.last_error = Some(error);
        self.last_rejected = Some(SystemTime::now());
    }
}

fn rfc3339<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.collect_str(&humantime::format_rfc3339_millis(*time)),
        None => serializer.serialize_none(),
    }
}

/// Every status, by resource.
#[derive(Debug, Default)]
pub(crate) struct StatusRegistry {
    entries: Mutex<BTreeMap<ResourceId, ResourceStatus>>,
}

impl StatusRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ResourceId, ResourceStatus>> {
        match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Every status, in order of kind and name.
    pub fn all(&self) -> Vec<ResourceStatus> {
        self.lock().values().cloned().collect()
    }

    /// Records that `version` of each resource of `versions` was applied at `at`.
    pub fn applied(&self, versions: &BTreeMap<ResourceId, String>, at: SystemTime) {
        let mut entries = self.lock();
        for (id, version) in versions {
            let entry = entries
                .entry(id.clone())
                .or_insert_with(|| new_status(id.clone()));
            entry.version = Some(version.clone());
            entry.last_updated = Some(at);
            entry.last_error = None;
            entry.rejected_version = None;
            if entry.state == ResourceState::Rejected {
                entry.state = ResourceState::Active;
            }
        }
    }

    /// Records that `version` of resource `id` was rejected for `error`.
    pub fn rejected(&self, id: &ResourceId, version: Option<&str>, error: String) {
        let mut entries = self.lock();
        let entry = entries
            .entry(id.clone())
            .or_insert_with(|| new_status(id.clone()));
        entry.last_error = Some(error);
        entry.rejected_version = version.map(str::to_owned);
    }

    /// Forgets `ids`: their source removed them (a resource still in use is listed again by the
    /// next [`StatusRegistry::set_states`]).
    pub fn removed(&self, ids: &[ResourceId]) {
        let mut entries = self.lock();
        for id in ids {
            entries.remove(id);
        }
    }

    /// Publishes the states of the config now running. Each listed resource takes its state;
    /// a listener, route config or cluster not listed is gone (its source removed it) or no
    /// longer waits (a resource of the file): it leaves the registry, unless no version of it
    /// was ever applied and its rejection is still worth showing.
    pub fn set_states(&self, states: &[(ResourceId, ResourceState)]) {
        let mut entries = self.lock();
        let listed: BTreeMap<&ResourceId, &ResourceState> =
            states.iter().map(|(id, state)| (id, state)).collect();
        entries.retain(|id, entry| match listed.get(id) {
            Some(state) => {
                entry.state = (*state).clone();
                true
            }
            None => {
                id.kind == ResourceKind::Endpoints
                    || (entry.state == ResourceState::Rejected && entry.version.is_none())
            }
        });
        for (id, state) in states {
            entries.entry(id.clone()).or_insert_with(|| ResourceStatus {
                state: state.clone(),
                ..new_status(id.clone())
            });
        }
    }
}

fn new_status(id: ResourceId) -> ResourceStatus {
    ResourceStatus {
        id,
        state: ResourceState::Rejected,
        version: None,
        last_updated: None,
        last_error: None,
        rejected_version: None,
    }
}
