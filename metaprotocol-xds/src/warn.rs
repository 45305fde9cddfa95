//! Warnings whose cause repeats with every response: a server that sends what the client
//! ignores sends it again at each push, and a warning per response would flood the log
//! while saying nothing new. As the router warns again of a certificate's dates only after a
//! while, such a warning is logged at once the first time, then at most once per
//! [`REPEAT`], saying how many like it were passed over since; those go to `debug`. Warnings
//! whose causes differ (NACKs) are gated per cause ([`ByCause`]): a new one is logged at once.

use std::time::{Duration, Instant};

/// How long a repeated warning stays quiet after it was logged.
pub(crate) const REPEAT: Duration = Duration::from_secs(60);

/// One kind of repeated warning: when it was last logged and how many were passed over since.
#[derive(Debug, Default)]
pub(crate) struct Repeated {
    last: Option<Instant>,
    passed_over: u64,
}

impl Repeated {
    /// Whether to log the warning at `now` at `warn` level: `Some` with the number passed over
    /// since the last one logged, or `None` to log it at `debug` only (it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let quiet = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < REPEAT);
        if quiet {
            self.passed_over = self.passed_over.saturating_add(1);
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.passed_over))
    }
}

/// The most causes [`ByCause`] keeps a gate for.
const MAX_CAUSES: usize = 64;

/// Repeated warnings of one kind whose causes differ (NACKs, each naming its resource and
/// fault): each cause is gated on its own, so that one sent again at each push is held back
/// while a new one is logged at once. At most [`MAX_CAUSES`] are kept: past them, the one
/// logged longest ago is forgotten (it is logged at once if it comes again).
#[derive(Debug, Default)]
pub(crate) struct ByCause {
    /// Each cause's gate, by a hash of the cause (its text may be long).
    gates: Vec<(u64, Repeated)>,
}

impl ByCause {
    /// The gate of the warning caused by `cause` (the text it logs).
    pub fn of(&mut self, cause: &str) -> &mut Repeated {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        cause.hash(&mut hasher);
        let key = hasher.finish();
        let index = match self.gates.iter().position(|(held, _)| *held == key) {
            Some(index) => index,
            None => {
                if self.gates.len() >= MAX_CAUSES {
                    let oldest = self
                        .gates
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, (_, gate))| gate.last)
                        .map(|(index, _)| index);
                    if let Some(oldest) = oldest {
                        self.gates.swap_remove(oldest);
                    }
                }
                self.gates.push((key, Repeated::default()));
                self.gates.len() - 1
            }
        };
        &mut self.gates[index].1
    }
}

/// Logs a repeated warning through `gate`: `warn!` when the gate admits it (with
/// `passed_over`, the number of like warnings not logged since), `debug!` otherwise.
macro_rules! warn_repeated {
    ($gate:expr, $($fields:tt)+) => {
        match $gate.admit(std::time::Instant::now()) {
            Some(passed_over) => tracing::warn!(passed_over, $($fields)+),
            None => tracing::debug!($($fields)+),
        }
    };
}
pub(crate) use warn_repeated;

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_repeated_warning_is_logged_first_then_once_per_interval_with_what_it_passed_over() {
        let start = Instant::now();
        let mut gate = Repeated::default();
        assert_eq!(gate.admit(start), Some(0));
        for seconds in [1, 30, 59] {
            assert_eq!(gate.admit(start + Duration::from_secs(seconds)), None);
        }
        assert_eq!(gate.admit(start + REPEAT), Some(3));
        assert_eq!(gate.admit(start + REPEAT + Duration::from_secs(1)), None);
        assert_eq!(gate.admit(start + REPEAT * 3), Some(1));
    }

    #[test]
    fn causes_are_gated_each_on_its_own_within_a_bound() {
        let start = Instant::now();
        let later = start + REPEAT / 2;
        let mut causes = ByCause::default();
        assert_eq!(causes.of("a").admit(start), Some(0));
        assert_eq!(causes.of("a").admit(start), None);
        for n in 1..MAX_CAUSES {
            assert_eq!(causes.of(&n.to_string()).admit(later), Some(0));
        }
        assert_eq!(causes.of("a").admit(later), None, "a is held back");
        // Past the bound, "a", logged longest ago, is forgotten: logged at once again.
        assert_eq!(causes.of("b").admit(later), Some(0));
        assert_eq!(causes.gates.len(), MAX_CAUSES);
        assert_eq!(causes.of("a").admit(later), Some(0));
        assert_eq!(causes.of("2").admit(later), None, "2 is held back");
        assert_eq!(causes.gates.len(), MAX_CAUSES);
    }

    /// The warnings logged on this thread while `run` runs, each as its fields (`name=value`).
    pub(crate) fn warnings_of<T>(run: impl FnOnce() -> T) -> (T, Vec<String>) {
        use std::fmt::Write;
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Level, Metadata};

        struct Fields(String);

        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, "{}={value:?} ", field.name());
            }
        }

        struct Warnings(Arc<Mutex<Vec<String>>>);

        impl tracing::Subscriber for Warnings {
            fn enabled(&self, metadata: &Metadata<'_>) -> bool {
                *metadata.level() == Level::WARN
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, event: &Event<'_>) {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                if let Ok(mut warnings) = self.0.lock() {
                    warnings.push(fields.0);
                }
            }
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }

        let warnings = Arc::new(Mutex::new(Vec::new()));
        let result = tracing::subscriber::with_default(Warnings(warnings.clone()), run);
        let warnings = warnings.lock().map(|warnings| warnings.clone());
        (result, warnings.unwrap_or_default())
    }
}
