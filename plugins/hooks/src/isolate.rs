//! Running one hook with its failures contained: a panic while creating or polling its future
//! is caught, and a hook that outlasts its timer is abandoned (its future is dropped).
//!
//! The timer is a future the caller brings (the host's `sleep`), so that this works the same in
//! a plugin linked statically and in one loaded from a dynamic library, which must not touch an
//! async runtime itself.

use plugin_api::BoxFuture;
use plugin_api::ffi::{CatchUnwind, panic_message};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::Poll;

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
    let future = match panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(future) => future,
        Err(payload) => return Ran::Panicked(panic_message(payload.as_ref())),
    };
    let mut call = CatchUnwind(future);
    let mut timer = timer;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(result) = Pin::new(&mut call).poll(cx) {
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
