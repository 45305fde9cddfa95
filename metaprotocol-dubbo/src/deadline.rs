//! A consumer's deadline for its call, as Dubbo carries it, and what each attempt tells its
//! provider of it.
//!
//! The deadline is the `_TO` attachment, Dubbo's timeout countdown (Dubbo 3, and 2.7.10 on):
//! the milliseconds left of the call when the consumer sent it, written by consumers that
//! enable `enable-timeout-countdown` and by every provider that calls on under a countdown it
//! was given. A Java provider counts down from it (`ContextFilter`), drops the result of a call
//! that outran it (`TimeoutFilter`), and passes what is left of it on to the calls it makes in
//! turn. It is a decimal number, an int or a string (Java's `RpcUtils` reads both).
//!
//! The `timeout` attachment is not a deadline: its unit depends on the client (dubbo2.js sends
//! its service timeout in seconds, `3`; sofa-rpc-node and Java applications milliseconds,
//! `"3000"`), and no provider acts on it (Dubbo replaced it on the wire with `_TO`). Taking
//! dubbo2.js's `3` for 3 ms would time out every call at once.
//!
//! The proxy waits for an answer no longer than `_TO`
//! ([`Message::timeout`](metaprotocol_core::Message::timeout)), and an attempt that waits less
//! (a shorter route timeout, a retry, a per-try timeout) tells its provider so in `_TO`, as
//! Dubbo's own consumers write what is left of the call into each call.

use std::time::Duration;

use metaprotocol_core::Metadata;

/// The attachment of Dubbo's timeout countdown: the milliseconds left of the call.
pub(crate) const TIMEOUT_COUNTDOWN: &str = "_TO";

/// The consumer's deadline for a call whose attachments are `metadata`: its `_TO`, when that
/// is a positive decimal number of milliseconds (a value that is not, or 0, is none).
#[inline]
pub(crate) fn requested(metadata: &Metadata) -> Option<Duration> {
    countdown(metadata).map(Duration::from_millis)
}

/// The `_TO` an attempt that waits `wait` for its answer writes in place of the consumer's:
/// the wait in whole milliseconds (at least 1: a provider takes 0 for a countdown already
/// spent), where that is less than the consumer's `_TO`; `None` when the consumer sent no
/// `_TO` (or one not more).
pub(crate) fn told_countdown(wait: Duration, metadata: &Metadata) -> Option<u64> {
    let sent = countdown(metadata)?;
    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    (millis < sent).then_some(millis)
}

/// The `_TO` of `metadata` as a positive number of milliseconds: decimal digits, as Java's
/// `Long.parseLong` reads a timeout (a `+` in front too). Asked of every call: the key is a
/// constant that the inlined lookup tells absent, as it nearly always is, by a bit of the
/// metadata's key summary, without a search.
#[inline]
fn countdown(metadata: &Metadata) -> Option<u64> {
    let text = std::str::from_utf8(metadata.value_bytes(TIMEOUT_COUNTDOWN)?).ok()?;
    text.parse::<u64>().ok().filter(|millis| *millis > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(entries: &[(&'static str, &'static str)]) -> Metadata {
        let mut metadata = Metadata::new();
        for &(key, value) in entries {
            metadata.insert(key, value);
        }
        metadata
    }

    #[test]
    fn the_countdown_is_the_deadline_and_the_timeout_attachment_is_not() {
        let ms = Duration::from_millis;
        let both = metadata(&[("timeout", "3"), (TIMEOUT_COUNTDOWN, "1200")]);
        assert_eq!(requested(&both), Some(ms(1200)));
        assert_eq!(requested(&metadata(&[("timeout", "3000")])), None);
        assert_eq!(
            requested(&metadata(&[(TIMEOUT_COUNTDOWN, "+25")])),
            Some(ms(25))
        );
        for nonsense in ["0", "-5", "", "3s", "99999999999999999999"] {
            let entries = metadata(&[(TIMEOUT_COUNTDOWN, nonsense)]);
            assert_eq!(requested(&entries), None, "{nonsense:?}");
        }
        assert_eq!(requested(&Metadata::new()), None);
    }

    #[test]
    fn only_a_countdown_sent_is_told_and_only_when_shorter() {
        let ms = Duration::from_millis;
        let sent = metadata(&[(TIMEOUT_COUNTDOWN, "1000")]);
        assert_eq!(told_countdown(ms(300), &sent), Some(300));
        assert_eq!(told_countdown(Duration::from_micros(200), &sent), Some(1));
        assert_eq!(told_countdown(ms(1000), &sent), None);
        assert_eq!(
            told_countdown(ms(300), &metadata(&[("timeout", "1000")])),
            None
        );
    }
}
