//! A consumer's deadline for its call, as Dubbo carries it, and what each attempt tells its
//! provider of it.
//!
//! - `_TO`, Dubbo's timeout countdown (Dubbo 3, and 2.7.10 on): the milliseconds left of the
//!   call when the consumer sent it, written by consumers that enable
//!   `enable-timeout-countdown` and by every provider that calls on under a countdown it was
//!   given. A Java provider counts down from it (`ContextFilter`), drops the result of a call
//!   that outran it (`TimeoutFilter`), and passes what is left of it on to the calls it makes
//!   in turn. An int or a string (Java's `RpcUtils` reads both).
//! - `timeout`, the consumer's timeout for the call, when it is a string of decimal
//!   milliseconds: Java consumers (Dubbo 3 writes the time left of each call there, as a
//!   string), dubbo-go and sofa-rpc-node send it so. Providers do not act on it, but the
//!   consumer waits no longer. dubbo2.js sends its service timeout there as an int of
//!   *seconds* (`3`), so an int `timeout` is none: taken for milliseconds, it would time out
//!   every dubbo2.js call at once.
//!
//! `_TO` counts when both are there, being the time left. The proxy waits for an answer no
//! longer than the deadline ([`Message::timeout`](metaprotocol_core::Message::timeout)), and
//! an attempt that waits less (a shorter route timeout, a retry, a per-try timeout) tells its
//! provider so in `_TO`, as Dubbo's own consumers write what is left of the call into each
//! call, when the consumer sent `_TO`. `timeout`, which providers ignore, goes as it came.

use std::time::Duration;

use metaprotocol_core::Metadata;

/// The attachment of Dubbo's timeout countdown: the milliseconds left of the call.
pub(crate) const TIMEOUT_COUNTDOWN: &str = "_TO";

/// The attachment of the consumer's timeout for the call.
pub(crate) const TIMEOUT: &str = "timeout";

/// The consumer's deadline for a call whose attachments are `metadata`: its `_TO`, or else,
/// when `timeout_is_text` (its `timeout` attachment is a string), its `timeout`, whichever is
/// there as a positive decimal number of milliseconds (a value that is not, or 0, is none).
///
/// A call that names neither, as most do, is told by a flag and a bit of the metadata's key
/// summary inlined into the body's reading, without a call; a call that may name one has its
/// values read and parsed out of line, which keeps that parsing out of every body's reading.
#[inline(always)]
pub(crate) fn requested(metadata: &Metadata, timeout_is_text: bool) -> Option<Duration> {
    if !timeout_is_text && metadata.value_bytes(TIMEOUT_COUNTDOWN).is_none() {
        return None;
    }
    requested_of(metadata, timeout_is_text)
}

/// [`requested`] of a call that may name a deadline.
#[inline(never)]
fn requested_of(metadata: &Metadata, timeout_is_text: bool) -> Option<Duration> {
    countdown(metadata)
        .or_else(|| {
            timeout_is_text
                .then(|| positive_millis(metadata.value_bytes(TIMEOUT)?))
                .flatten()
        })
        .map(Duration::from_millis)
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

/// The `_TO` of `metadata` as a positive number of milliseconds. Asked of every call: the key
/// is a constant that the inlined lookup tells absent, as it nearly always is, by a bit of the
/// metadata's key summary, without a search.
#[inline]
fn countdown(metadata: &Metadata) -> Option<u64> {
    positive_millis(metadata.value_bytes(TIMEOUT_COUNTDOWN)?)
}

/// `value` as a positive number of milliseconds: decimal digits, as Java's `Long.parseLong`
/// reads a timeout (a `+` in front too).
fn positive_millis(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
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
    fn the_countdown_counts_first_and_a_timeout_only_as_text() {
        let ms = Duration::from_millis;
        let both = metadata(&[(TIMEOUT, "3000"), (TIMEOUT_COUNTDOWN, "1200")]);
        assert_eq!(requested(&both, true), Some(ms(1200)));
        let timeout = metadata(&[(TIMEOUT, "3000")]);
        assert_eq!(requested(&timeout, true), Some(ms(3000)));
        assert_eq!(
            requested(&timeout, false),
            None,
            "dubbo2.js's int, in seconds"
        );
        let spent = metadata(&[(TIMEOUT_COUNTDOWN, "0"), (TIMEOUT, "700")]);
        assert_eq!(requested(&spent, true), Some(ms(700)));
        let plus = metadata(&[(TIMEOUT_COUNTDOWN, "+25")]);
        assert_eq!(requested(&plus, false), Some(ms(25)));
        for nonsense in ["0", "-5", "", "3s", "99999999999999999999"] {
            let entries = metadata(&[(TIMEOUT_COUNTDOWN, nonsense), (TIMEOUT, nonsense)]);
            assert_eq!(requested(&entries, true), None, "{nonsense:?}");
        }
        assert_eq!(requested(&Metadata::new(), true), None);
    }

    #[test]
    fn only_a_countdown_sent_is_told_and_only_when_shorter() {
        let ms = Duration::from_millis;
        let sent = metadata(&[(TIMEOUT_COUNTDOWN, "1000")]);
        assert_eq!(told_countdown(ms(300), &sent), Some(300));
        assert_eq!(told_countdown(Duration::from_micros(200), &sent), Some(1));
        assert_eq!(told_countdown(ms(1000), &sent), None);
        assert_eq!(
            told_countdown(ms(300), &metadata(&[(TIMEOUT, "1000")])),
            None
        );
    }
}
