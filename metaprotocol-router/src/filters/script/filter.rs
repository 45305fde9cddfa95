//! The filter every script runtime shares: instances of one script, one per worker, and the
//! hooks that fill an instance's [`Exchange`], run the script and apply what it asked for.

use std::sync::Mutex;

use metaprotocol_core::{
    CompleteContext, FilterDecision, L7Filter, LocalReply, RequestContext, ResponseContext,
};

use super::exchange::Limit;
use super::{Exchange, Failure, Hook, ScriptStats, with_slot};

/// Why a run failed: the counter's reason and what the script said.
pub(crate) type RunError = (Failure, String);

/// One loaded copy of a script, with its own runtime state (a Lua state, a WebAssembly store).
pub(crate) trait ScriptInstance: Send + 'static {
    /// True if the script defines `hook` (hooks it does not define cost nothing).
    fn defines(&self, hook: Hook) -> bool;

    /// Works on the instance's exchange.
    fn with_exchange<R>(&mut self, f: impl FnOnce(&mut Exchange) -> R) -> Result<R, RunError>;

    /// Runs `hook` (the caller filled the exchange) within the instance's budgets.
    fn run(&mut self, hook: Hook) -> Result<(), RunError>;
}

/// `result`, unless the run ran into a bound of its exchange: then it failed for memory (what
/// the script made the host hold), even if the script caught the error and returned.
fn within(result: Result<(), RunError>, exceeded: Option<Limit>) -> Result<(), RunError> {
    match (exceeded, result) {
        (None, result) => result,
        (Some(_), Err((_, detail))) => Err((Failure::Memory, detail)),
        (Some(limit), Ok(())) => Err((Failure::Memory, limit.to_string())),
    }
}

/// A script filter: see the [module docs](super).
pub(crate) struct ScriptFilter<I> {
    name: &'static str,
    instances: Box<[Mutex<I>]>,
    /// Which hooks the script defines, by [`Hook`] index.
    defines: [bool; 3],
    stats: ScriptStats,
}

impl<I: ScriptInstance> ScriptFilter<I> {
    /// The filter `name` over `instances` of one script; `None` if the script defines no hook.
    pub fn new(name: &'static str, instances: Box<[Mutex<I>]>, stats: ScriptStats) -> Option<Self> {
        let defines = instances
            .first()
            .and_then(|instance| instance.lock().ok())
            .map(|instance| {
                [Hook::Request, Hook::Response, Hook::Complete].map(|h| instance.defines(h))
            })?;
        defines.contains(&true).then_some(Self {
            name,
            instances,
            defines,
            stats,
        })
    }

    /// Runs `hook` on a free instance: `begin` fills its exchange from `ctx`, `end` applies
    /// what the script asked for to `ctx` (always, so that the exchange is emptied).
    fn run<C, R: Default>(
        &self,
        hook: Hook,
        ctx: &mut C,
        begin: impl FnOnce(&mut Exchange, &mut C),
        end: impl FnOnce(&mut Exchange, &mut C) -> R,
    ) -> (R, Result<(), RunError>) {
        with_slot(&self.instances, |instance| {
            let result = instance
                .with_exchange(|exchange| begin(exchange, ctx))
                .and_then(|()| instance.run(hook));
            let ended = instance.with_exchange(|exchange| {
                let exceeded = exchange.exceeded();
                (end(exchange, ctx), exceeded)
            });
            match ended {
                Ok((ended, exceeded)) => (ended, within(result, exceeded)),
                Err(err) => (R::default(), result.and(Err(err))),
            }
        })
    }

    fn decide(
        &self,
        hook: Hook,
        reply: Option<LocalReply>,
        result: Result<(), RunError>,
    ) -> FilterDecision {
        match (result, reply) {
            (Err((failure, detail)), _) => {
                FilterDecision::Reply(self.stats.failed(hook, failure, &detail))
            }
            (Ok(()), Some(reply)) => FilterDecision::Reply(reply),
            (Ok(()), None) => FilterDecision::Continue,
        }
    }
}

impl<I: ScriptInstance> L7Filter for ScriptFilter<I> {
    fn name(&self) -> &str {
        self.name
    }

    fn on_request(&self, ctx: &mut RequestContext<'_>) -> FilterDecision {
        if !self.defines[Hook::Request as usize] {
            return FilterDecision::Continue;
        }
        let (reply, result) = self.run(
            Hook::Request,
            ctx,
            |exchange, ctx| exchange.begin_request(ctx),
            |exchange, ctx| exchange.end_request(ctx),
        );
        self.decide(Hook::Request, reply, result)
    }

    fn on_response(&self, ctx: &mut ResponseContext<'_>) -> FilterDecision {
        if !self.defines[Hook::Response as usize] {
            return FilterDecision::Continue;
        }
        let (reply, result) = self.run(
            Hook::Response,
            ctx,
            |exchange, ctx| exchange.begin_response(ctx),
            |exchange, ctx| exchange.end_response(ctx),
        );
        self.decide(Hook::Response, reply, result)
    }

    fn on_complete(&self, ctx: &CompleteContext<'_>) {
        if !self.defines[Hook::Complete as usize] {
            return;
        }
        let ((), result) = self.run(
            Hook::Complete,
            &mut (),
            |exchange, ()| exchange.begin_complete(ctx),
            |exchange, ()| exchange.end_complete(),
        );
        if let Err((failure, detail)) = result {
            self.stats.failed(Hook::Complete, failure, &detail);
        }
    }
}

#[cfg(all(test, feature = "lua"))]
mod tests {
    use metaprotocol_core::LocalReplyKind;

    use crate::filters::script::testing::{TestResult, counted, on_request, record, reply_kind};
    use crate::filters::testing::build;
    use crate::stats::Metrics;

    /// The bounds of the exchange hold for every script runtime, and a script that catches the
    /// error still fails its hook (else it would go on with some of its edits dropped).
    #[test]
    fn a_hook_past_a_bound_fails_even_if_the_script_catches_the_error() -> TestResult {
        let metrics = Metrics::new();
        let source = r#"
            function on_request(msg)
              pcall(function() for i = 1, 1000 do msg:set("k" .. i, "v") end end)
            end
        "#;
        let config = serde_json::json!({ "source": source, "instances": 1 });
        let filter = build("lua", config, &metrics)?;
        let request = crate::filters::script::testing::request(&[]);
        let (decision, mutation) = on_request(&*filter, &request, &mut record());
        assert_eq!(reply_kind(&decision), Some(LocalReplyKind::Internal));
        assert!(
            counted(&metrics, "reason=\"memory\"", 1),
            "{}",
            metrics.render()
        );
        assert_eq!(
            mutation.sets().len(),
            metaprotocol_core::MAX_METADATA_ENTRIES
        );
        Ok(())
    }
}
