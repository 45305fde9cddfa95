//! A bound on what a filter has under way at once (faults in effect, checks waiting for a
//! backend): one atomic add to enter and one to leave, no lock, no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// At most `max` entries under way at once.
#[derive(Debug)]
pub(crate) struct InFlightLimit {
    count: AtomicU32,
    max: u32,
}

impl InFlightLimit {
    /// A limit of `max` entries, none under way.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            count: AtomicU32::new(0),
            max,
        })
    }

    /// The most entries under way at once.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// One more entry, under way until the guard is dropped; `None` when `max` already are.
    pub fn try_enter(self: &Arc<Self>) -> Option<InFlight> {
        self.try_enter_within(self.max)
    }

    /// One more entry, under way until the guard is dropped; `None` when `max` (the caller's
    /// own bound, for a limit whose users each have one) or more already are.
    pub fn try_enter_within(self: &Arc<Self>, max: u32) -> Option<InFlight> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < max.min(self.max)).then_some(count + 1)
            })
            .ok()?;
        Some(InFlight(self.clone()))
    }
}

/// An entry under way: it leaves its limit when dropped, however its work ended (done, timed
/// out, or its request gone).
#[derive(Debug)]
pub(crate) struct InFlight(Arc<InFlightLimit>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_past_the_limit_wait_for_one_to_leave() {
        let limit = InFlightLimit::new(2);
        let first = limit.try_enter();
        let second = limit.try_enter();
        assert!(first.is_some() && second.is_some());
        assert!(limit.try_enter().is_none());
        drop(first);
        assert!(limit.try_enter().is_some(), "room again once one left");
    }
}
