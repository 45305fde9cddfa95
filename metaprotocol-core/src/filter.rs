//! Layer-7 filters: request and response hooks, and the chain that runs them.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::{LocalReply, Message, Mutation};

/// Asynchronous work a filter waits on (a global rate limit, an external authorization ...).
/// It resolves to the filter's final decision.
pub type FilterFuture = Pin<Box<dyn Future<Output = FilterDecision> + Send + 'static>>;

/// What a filter hook decided.
pub enum FilterDecision {
    /// Pass the message on to the next filter.
    Continue,
    /// Stop the chain and answer the client with this local reply.
    Reply(LocalReply),
    /// Wait for asynchronous work, then apply its decision. Filters that never wait cost no
    /// allocation; only this variant boxes.
    Wait(FilterFuture),
}

impl fmt::Debug for FilterDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Continue => f.write_str("Continue"),
            Self::Reply(reply) => f.debug_tuple("Reply").field(reply).finish(),
            Self::Wait(_) => f.write_str("Wait(..)"),
        }
    }
}

/// Facts about the downstream connection a message arrived on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The name of the listener that accepted the connection.
    pub listener: Arc<str>,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The proxy's address for this connection.
    pub local_addr: SocketAddr,
    /// The client's verified identity (a SPIFFE id or certificate subject) when the listener
    /// uses mutual TLS.
    pub peer_identity: Option<Arc<str>>,
}

/// What a request hook sees: the request, the mutation that will be applied when it is sent
/// upstream, and the connection it came from.
pub struct RequestContext<'a> {
    /// The decoded request.
    pub request: &'a Message,
    /// Header edits for the upstream request; filters add to it.
    pub mutation: &'a mut Mutation,
    /// The downstream connection.
    pub connection: &'a ConnectionInfo,
}

/// What a response hook sees: the request, its response, the mutation applied when the
/// response is sent to the client, and the connection.
pub struct ResponseContext<'a> {
    /// The request being answered.
    pub request: &'a Message,
    /// The decoded upstream response.
    pub response: &'a Message,
    /// Header edits for the downstream response; filters add to it.
    pub mutation: &'a mut Mutation,
    /// The downstream connection.
    pub connection: &'a ConnectionInfo,
}

/// A layer-7 filter: hooks run on every request (in config order) and every response (in
/// reverse order).
///
/// Instances are built once per config and shared by all connections, so hooks take `&self`;
/// per-request state lives in the context. Hooks that do not wait must not allocate.
pub trait L7Filter: Send + Sync + 'static {
    /// The filter's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Called for each request and one-way request before routing.
    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision;

    /// Called for each upstream response before it is sent to the client. The default passes
    /// responses through.
    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        let _ = ctx;
        FilterDecision::Continue
    }
}

/// An ordered list of filters, cheap to clone and shared by all connections of a listener.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Arc<[Arc<dyn L7Filter>]>,
}

impl FilterChain {
    /// A chain running `filters` in this order on requests.
    pub fn new(filters: Vec<Arc<dyn L7Filter>>) -> Self {
        Self {
            filters: filters.into(),
        }
    }

    /// The filters, in request order.
    pub fn filters(&self) -> &[Arc<dyn L7Filter>] {
        &self.filters
    }

    /// True if the chain has no filters.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Runs every request hook in order; `Err` carries the reply of the filter that stopped it.
    pub async fn on_request(&self, ctx: &mut RequestContext<'_>) -> Result<(), LocalReply> {
        for filter in self.filters.iter() {
            settle(filter.on_request(ctx)).await?;
        }
        Ok(())
    }

    /// Runs every response hook in reverse order; `Err` carries the reply that replaces the
    /// response.
    pub async fn on_response(&self, ctx: &mut ResponseContext<'_>) -> Result<(), LocalReply> {
        for filter in self.filters.iter().rev() {
            settle(filter.on_response(ctx)).await?;
        }
        Ok(())
    }
}

impl fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.filters.iter().map(|filter| filter.name()))
            .finish()
    }
}

/// Resolves a decision, awaiting as many `Wait`s as it takes.
async fn settle(mut decision: FilterDecision) -> Result<(), LocalReply> {
    loop {
        match decision {
            FilterDecision::Continue => return Ok(()),
            FilterDecision::Reply(reply) => return Err(reply),
            FilterDecision::Wait(future) => decision = future.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::{ByteStr, LocalReplyKind, MessageKind};

    /// Records its name in a shared log; optionally waits, or replies.
    struct Probe {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        reply: bool,
        wait: bool,
    }

    impl L7Filter for Probe {
        fn name(&self) -> &str {
            self.name
        }

        fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
            self.log
                .lock()
                .map(|mut l| l.push(format!("req:{}", self.name)))
                .ok();
            ctx.mutation.set(
                ByteStr::from_static("seen"),
                ByteStr::from_static(self.name),
            );
            if self.reply {
                return FilterDecision::Reply(LocalReply::new(LocalReplyKind::Unauthorized, "no"));
            }
            if self.wait {
                return FilterDecision::Wait(Box::pin(async {
                    tokio::task::yield_now().await;
                    FilterDecision::Continue
                }));
            }
            FilterDecision::Continue
        }

        fn on_response(&self, _ctx: &mut ResponseContext<'_>) -> FilterDecision {
            self.log
                .lock()
                .map(|mut l| l.push(format!("resp:{}", self.name)))
                .ok();
            FilterDecision::Continue
        }
    }

    fn connection() -> ConnectionInfo {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        ConnectionInfo {
            listener: "test".into(),
            peer_addr: addr,
            local_addr: addr,
            peer_identity: None,
        }
    }

    fn chain(log: &Arc<Mutex<Vec<String>>>, specs: &[(&'static str, bool, bool)]) -> FilterChain {
        FilterChain::new(
            specs
                .iter()
                .map(|&(name, reply, wait)| {
                    Arc::new(Probe {
                        name,
                        log: log.clone(),
                        reply,
                        wait,
                    }) as Arc<dyn L7Filter>
                })
                .collect(),
        )
    }

    async fn run_request(
        chain: &FilterChain,
        request: &Message,
        mutation: &mut Mutation,
    ) -> Result<(), LocalReply> {
        let conn = connection();
        let mut ctx = RequestContext {
            request,
            mutation,
            connection: &conn,
        };
        chain.on_request(&mut ctx).await
    }

    #[tokio::test]
    async fn requests_in_order_responses_in_reverse_and_waits_resolve() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, &[("a", false, true), ("b", false, false)]);
        let request = Message::new(MessageKind::Request, 1, Bytes::new());
        let conn = connection();
        let mut mutation = Mutation::new();
        assert_eq!(run_request(&chain, &request, &mut mutation).await, Ok(()));
        assert_eq!(mutation.sets()[0].1, "b");
        let mut ctx = ResponseContext {
            request: &request,
            response: &request,
            mutation: &mut mutation,
            connection: &conn,
        };
        assert_eq!(chain.on_response(&mut ctx).await, Ok(()));
        let log = log.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(log, ["req:a", "req:b", "resp:b", "resp:a"]);
    }

    #[tokio::test]
    async fn a_reply_stops_the_chain() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let chain = chain(&log, &[("deny", true, false), ("never", false, false)]);
        let request = Message::new(MessageKind::Request, 1, Bytes::new());
        let reply = run_request(&chain, &request, &mut Mutation::new()).await;
        assert_eq!(reply.map_err(|r| r.kind), Err(LocalReplyKind::Unauthorized));
        assert_eq!(log.lock().map(|l| l.len()).unwrap_or_default(), 1);
    }
}
