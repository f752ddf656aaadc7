//! Running one hook with its failures contained: a panic while creating or polling its future
//! is caught, and a hook that outlasts its timer is abandoned (its future is dropped).
//!
//! The timer is a future the caller brings (the host's `sleep`), so that this works the same in
//! a plugin linked statically and in one loaded from a dynamic library, which must not touch an
//! async runtime itself.
//!
//! While a hook is called or its future polled, a thread-local marker says so
//! ([`inside_hook`]). An operation a hook causes by calling the orchestrator directly (a Rust
//! hook holding an `Orchestrator` clone and awaiting `execute`) reaches this plugin's
//! `intercept` and `observe` on the same thread, inside that poll: the plugin sees the marker
//! and does not hook it, so a hook cannot re-enter itself without end (and overflow the stack).

use plugin_api::BoxFuture;
use plugin_api::ffi::{CatchUnwind, panic_message};
use std::cell::Cell;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;

thread_local! {
    /// Whether this thread is calling a hook or polling its future.
    static INSIDE_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside a hook (calling it or polling its future): the
/// operations the hook causes there are not hooked.
pub(crate) fn inside_hook() -> bool {
    INSIDE_HOOK.try_with(Cell::get).unwrap_or(false)
}

/// Marks the thread as inside a hook until dropped (then restores what was there, so that
/// nesting and unwinding leave it right).
struct Inside(bool);

impl Inside {
    fn enter() -> Self {
        Inside(INSIDE_HOOK.try_with(|c| c.replace(true)).unwrap_or(false))
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let previous = self.0;
        let _ = INSIDE_HOOK.try_with(|c| c.set(previous));
    }
}

/// How a contained run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ran<T> {
    /// The hook answered.
    Done(T),
    /// The hook panicked (when called or while polled); the panic's message.
    Panicked(String),
    /// The timer fired first; the hook's future was dropped.
    TimedOut,
}

/// Calls `make` and polls its future against `timer`, with panics contained. The hook is
/// polled first, so a hook that answers at once always counts as answered (a synchronous hook
/// cannot be interrupted: it runs inside `make`).
pub(crate) async fn contained<T>(
    timer: BoxFuture<'static, ()>,
    make: impl FnOnce() -> BoxFuture<'static, T>,
) -> Ran<T> {
    let made = {
        let _inside = Inside::enter();
        panic::catch_unwind(AssertUnwindSafe(make))
    };
    let future = match made {
        Ok(future) => future,
        Err(payload) => return Ran::Panicked(panic_message(payload.as_ref())),
    };
    let mut call = CatchUnwind(future);
    let mut timer = timer;
    std::future::poll_fn(move |cx| {
        let polled = {
            let _inside = Inside::enter();
            Pin::new(&mut call).poll(cx)
        };
        if let Poll::Ready(result) = polled {
            return Poll::Ready(match result {
                Ok(value) => Ran::Done(value),
                Err(payload) => Ran::Panicked(panic_message(payload.as_ref())),
            });
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ran::TimedOut),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testkit::block_on;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn never() -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn now() -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    #[test]
    fn the_thread_is_marked_inside_a_hook_only_while_it_runs() {
        assert!(!inside_hook());
        let ran = block_on(contained(never(), || {
            let at_call = inside_hook();
            Box::pin(async move { (at_call, inside_hook()) })
        }));
        assert_eq!(ran, Ran::Done((true, true)));
        assert!(!inside_hook(), "restored after the run");
        let _: Ran<()> = block_on(contained(never(), || panic!("unwinds")));
        assert!(!inside_hook(), "restored after a panic");
    }

    #[test]
    fn an_answer_is_returned() {
        let ran = block_on(contained(never(), || Box::pin(async { 7 })));
        assert_eq!(ran, Ran::Done(7));
        // Answering at once wins even over a timer that has already fired.
        let ran = block_on(contained(now(), || Box::pin(async { 8 })));
        assert_eq!(ran, Ran::Done(8));
    }

    #[test]
    fn panics_when_called_and_when_polled_are_contained() {
        let ran: Ran<()> = block_on(contained(never(), || panic!("at the call")));
        assert_eq!(ran, Ran::Panicked("at the call".into()));
        let ran: Ran<()> = block_on(contained(never(), || Box::pin(async { panic!("while polled") })));
        assert_eq!(ran, Ran::Panicked("while polled".into()));
    }

    #[test]
    fn a_hook_that_never_answers_times_out_and_is_dropped() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(Arc::clone(&dropped));
        let ran: Ran<()> = block_on(contained(now(), move || {
            Box::pin(async move {
                let _flag = flag;
                std::future::pending::<()>().await;
            })
        }));
        assert_eq!(ran, Ran::TimedOut);
        assert!(dropped.load(Ordering::SeqCst), "the abandoned hook's future is dropped");
    }
}
