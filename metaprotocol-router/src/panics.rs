//! A connection's task that panics (a bug in a codec or a filter, the engine's or a user's)
//! ends that connection only. The runtime would catch the panic anyway, but silently: it is
//! caught here to be counted and logged. What the task held leaves with it through its
//! owners' `Drop`s: its calls in flight leave their gauges, and an upstream connection's
//! callers are answered with a reset. Every other connection goes on.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Runs the connection's task `task`; if it panics, hands the panic's message to `report`
/// (which counts and logs it).
///
/// A combinator, not an `async fn`: an `async fn` keeps its argument and the future it awaits
/// in separate places, and a connection's task would take twice its size.
pub(crate) fn contained<F: Future<Output = ()>>(
    task: F,
    report: impl FnOnce(&str),
) -> impl Future<Output = ()> {
    // Unwind safety: the task's own state is dropped with the panic, never used again. What it
    // shares with other tasks (gauges, pools, route tables) it changes through atomics and
    // short critical sections that call no codec or filter, which a panic leaves whole.
    AssertUnwindSafe(task).catch_unwind().map(|outcome| {
        if let Err(panic) = outcome {
            report(message(panic.as_ref()));
        }
    })
}

/// What a panic said, when it said it with a string (as `panic!` and `unwrap` do).
fn message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::future::Future;

    use super::contained;

    fn run(task: impl Future<Output = ()>) {
        futures::executor::block_on(task);
    }

    #[test]
    fn a_panic_is_reported_with_its_message_and_ends_only_the_task() {
        let reported = RefCell::new(Vec::new());
        let report = |message: &str| reported.borrow_mut().push(message.to_owned());
        run(contained(async { panic!("static") }, report));
        let value = 7;
        run(contained(
            async move { panic!("formatted {value}") },
            report,
        ));
        run(contained(async {}, report));
        assert_eq!(*reported.borrow(), ["static", "formatted 7"]);
    }

    #[test]
    fn a_contained_task_is_its_size_plus_its_report() {
        let state = [0u8; 512];
        let task = async move {
            std::hint::black_box(&state);
            futures::future::ready(()).await;
        };
        let task_size = std::mem::size_of_val(&task);
        let report = [0u64; 5];
        let wrapped = contained(task, move |_| {
            std::hint::black_box(&report);
        });
        // Room for the report's 40 bytes and a tag; an `async fn` took the task's size twice.
        assert!(
            std::mem::size_of_val(&wrapped) <= task_size + 40 + 16,
            "{} for a task of {task_size}",
            std::mem::size_of_val(&wrapped)
        );
    }
}
