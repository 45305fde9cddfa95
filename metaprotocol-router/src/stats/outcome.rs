//! How a request ended, as metrics, access logs and traces name it: one bounded set of values,
//! read from the request's final [`Outcome`] in one place.

use metaprotocol_core::{LocalReplyKind, Outcome, ResponseFlags, ResponseStatus};

/// Every `outcome` label value: the upstream's answer (`success`, `application_error`,
/// `server_error`), a client gone before its answer (`client_gone`), then each kind of local
/// reply the proxy answered with, in [`LocalReplyKind::ALL`] order.
pub(crate) const OUTCOMES: [&str; 15] = [
    "success",
    "application_error",
    "server_error",
    "client_gone",
    "route_not_found",
    "no_healthy_upstream",
    "unavailable",
    "over_limit",
    "unauthorized",
    "timeout",
    "upstream_reset",
    "upstream_connect_failure",
    "fault_abort",
    "bad_request",
    "internal",
];

/// Where the local reply kinds start in [`OUTCOMES`].
const LOCAL_REPLIES: usize = 4;

/// A request's outcome: an index into [`OUTCOMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestOutcome(u8);

impl RequestOutcome {
    pub const SUCCESS: Self = Self(0);
    pub const APPLICATION_ERROR: Self = Self(1);
    pub const SERVER_ERROR: Self = Self(2);
    pub const CLIENT_GONE: Self = Self(3);

    /// Classifies a final outcome: the proxy's own answer first (it replaced whatever came
    /// before), then the upstream's status, then a client gone; a request that ended with none
    /// of these (a one-way call sent) succeeded.
    pub fn of(outcome: &Outcome) -> Self {
        if let Some(kind) = outcome.local_reply {
            return Self::local(kind);
        }
        match outcome.status {
            Some(ResponseStatus::Ok) => Self::SUCCESS,
            Some(ResponseStatus::ApplicationError) => Self::APPLICATION_ERROR,
            Some(ResponseStatus::ServerError) => Self::SERVER_ERROR,
            None if outcome
                .flags
                .contains(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION) =>
            {
                Self::CLIENT_GONE
            }
            None => Self::SUCCESS,
        }
    }

    /// The outcome of a local reply of `kind` (`internal` for a kind this version does not
    /// know).
    pub fn local(kind: LocalReplyKind) -> Self {
        let index = LocalReplyKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(OUTCOMES.len() - 1, |i| LOCAL_REPLIES + i);
        Self(index as u8)
    }

    /// Its position in [`OUTCOMES`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Its label value.
    pub fn name(self) -> &'static str {
        OUTCOMES[self.index()]
    }

    /// The local reply kind, when the proxy answered.
    pub fn local_reply(self) -> Option<LocalReplyKind> {
        self.index()
            .checked_sub(LOCAL_REPLIES)
            .and_then(|i| LocalReplyKind::ALL.get(i).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_reply_outcomes_are_the_kinds_names() {
        let names: Vec<&str> = LocalReplyKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            OUTCOMES[LOCAL_REPLIES..],
            names[..],
            "update OUTCOMES with the kinds"
        );
        for kind in LocalReplyKind::ALL {
            let outcome = RequestOutcome::local(kind);
            assert_eq!(outcome.name(), kind.name());
            assert_eq!(outcome.local_reply(), Some(kind));
        }
    }

    #[test]
    fn the_proxys_answer_wins_then_the_upstreams_then_a_client_gone() {
        let mut outcome = Outcome {
            status: Some(ResponseStatus::ApplicationError),
            ..Outcome::default()
        };
        assert_eq!(RequestOutcome::of(&outcome).name(), "application_error");
        outcome.local_reply = Some(LocalReplyKind::Internal);
        assert_eq!(RequestOutcome::of(&outcome).name(), "internal");
        let gone = Outcome {
            flags: ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION,
            ..Outcome::default()
        };
        assert_eq!(RequestOutcome::of(&gone), RequestOutcome::CLIENT_GONE);
        assert_eq!(
            RequestOutcome::of(&Outcome::default()),
            RequestOutcome::SUCCESS
        );
    }
}
