//! The running listeners: bound sockets, their accept loops and connections, each with its own
//! drain, added, updated and removed without touching the others.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::UpdateError;
use crate::config::ListenerSpec;
use crate::server::{self, ListenerContext, Trackers, Workers};
use crate::transport::{Acceptor, TlsAcceptor};

/// One running listener.
struct Running {
    address: SocketAddr,
    /// Its socket, which its accept loop owns (the socket closes when the loop stops): a
    /// listener that replaces it at the same address takes it over.
    socket: Weak<TcpListener>,
    context: Arc<ArcSwap<ListenerContext>>,
    stop: CancellationToken,
    /// Cancelled by its accept loop once it stopped and let go of the socket: its connections'
    /// drain ([`ListenerContext::retired`] is its child).
    drain: CancellationToken,
    tracker: TaskTracker,
}

/// Every running listener, by name.
pub(crate) struct ListenerManager {
    listeners: Mutex<BTreeMap<String, Running>>,
    /// Cancelled at shutdown; every listener's stop token is its child.
    shutdown: CancellationToken,
    /// Tracks every accept loop and connection, for shutdown to wait on.
    proxy: TaskTracker,
    /// Where connections are served, if not on the accept loops' runtime.
    pub(super) workers: Option<Workers>,
}

impl std::fmt::Debug for ListenerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.lock().keys()).finish()
    }
}

/// Binds `spec`'s address.
pub(crate) async fn bind(spec: &ListenerSpec) -> Result<TcpListener, UpdateError> {
    TcpListener::bind(spec.address)
        .await
        .map_err(|source| UpdateError::Bind {
            listener: spec.name.clone(),
            address: spec.address,
            source: Arc::new(source),
        })
}

impl ListenerManager {
    pub fn new(shutdown: CancellationToken, proxy: TaskTracker) -> Self {
        Self {
            listeners: Mutex::new(BTreeMap::new()),
            shutdown,
            proxy,
            workers: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        match self.listeners.lock() {
            Ok(listeners) => listeners,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts serving `context` on the bound `listener` (a removed listener's, maybe: its
    /// accept loop lets go of it as it stops); returns its address.
    pub fn start(&self, listener: Arc<TcpListener>, mut context: ListenerContext) -> SocketAddr {
        let name = context.name.to_string();
        let address = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stop = self.shutdown.child_token();
        let drain = CancellationToken::new();
        let tracker = TaskTracker::new();
        context.retired = drain.child_token();
        let context = Arc::new(ArcSwap::from_pointee(context));
        tracing::info!(listener = %name, %address, "listening");
        let trackers = Trackers {
            listener: tracker.clone(),
            proxy: self.proxy.clone(),
            workers: self.workers.clone(),
        };
        let socket = Arc::downgrade(&listener);
        trackers.proxy.spawn(server::serve(
            listener,
            context.clone(),
            (stop.clone(), drain.clone()),
            trackers.clone(),
        ));
        self.lock().insert(
            name,
            Running {
                address,
                socket,
                context,
                stop,
                drain,
                tracker,
            },
        );
        address
    }

    /// Publishes a new context for listener `name`: new connections use it, and the open ones
    /// drain, as at the listener's removal, so that every client's calls meet the new settings
    /// within the drain time (a client told to go away reconnects to them).
    pub fn update(&self, mut context: ListenerContext) {
        if let Some(running) = self.lock().get(&*context.name) {
            context.retired = running.drain.child_token();
            let old = running.context.swap(Arc::new(context));
            old.retired.cancel();
        }
    }

    /// Stops listener `name`: it stops accepting, its connections drain, and once they are gone
    /// (with them, its context) its series are retired. True if it was running.
    pub fn remove(&self, name: &str) -> bool {
        let Some(running) = self.lock().remove(name) else {
            return false;
        };
        tracing::info!(listener = %name, "stopping; draining its connections");
        running.stop.cancel();
        running.tracker.close();
        true
    }

    /// The socket of listener `name`, while its accept loop runs.
    pub fn socket(&self, name: &str) -> Option<Arc<TcpListener>> {
        self.lock().get(name)?.socket.upgrade()
    }

    /// The TLS acceptor of listener `name`'s running context, if it terminates TLS.
    pub fn tls_acceptor(&self, name: &str) -> Option<Arc<TlsAcceptor>> {
        match &self.lock().get(name)?.context.load().acceptor {
            Acceptor::Tls(tls) => Some(tls.clone()),
            Acceptor::Plain => None,
        }
    }

    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> Option<SocketAddr> {
        self.lock().get(name).map(|r| r.address)
    }

    /// Every listener's name and bound address.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.lock()
            .iter()
            .map(|(name, running)| (name.clone(), running.address))
            .collect()
    }
}
