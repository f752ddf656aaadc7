//! Running untrusted plugin code: every call is bounded by a timeout and contained by
//! `catch_unwind`, both when the future is created and each time it is polled.
//!
//! The timer is armed only when the plugin's future first returns `Pending`: most calls are
//! answered in their first poll, and a tokio timer costs a read of the OS clock and a handle
//! on the runtime's timer. The first poll is timed on the cheap counter clock, and the timer
//! is armed for what is left of the timeout, so a plugin that works synchronously before it
//! yields gets no more time than one that yields at once.
//!
//! The future adapter is plugin-api's [`CatchUnwind`], the one the plugin side of the stable
//! ABI uses too: the boxed futures `async_trait` produces are `Unpin`, so it needs no pin
//! projection and no `unsafe`, and no `futures-util` dependency.

use crate::clock::real_now_ns;
use crate::error::ProviderFailure;
use plugin_api::ffi::CatchUnwind;
pub(crate) use plugin_api::ffi::panic_message;
use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::Unconstrained;
use tokio::time::Sleep;

/// A boxed future as `async_trait` methods return it.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the future `make` returns under `timeout`, turning a panic (at creation or while
/// polled) or the timeout into a [`ProviderFailure`].
pub(crate) async fn guarded<'a, T>(
    timeout: Duration,
    make: impl FnOnce() -> Boxed<'a, T>,
) -> Result<T, ProviderFailure> {
    bounded(timeout, made(make)).await
}

/// The first half of [`guarded`]: the plugin's future, made under `catch_unwind`. Kept apart so
/// that the hot path can make the future before it awaits [`bounded`], and its state machine
/// does not carry the closure (and the request inside it) across the await.
pub(crate) fn made<'a, T>(make: impl FnOnce() -> Boxed<'a, T>) -> Result<Boxed<'a, T>, ProviderFailure> {
    panic::catch_unwind(AssertUnwindSafe(make)).map_err(panic_failure)
}

/// The second half of [`guarded`]: the future `made` made, run under `timeout` and
/// `catch_unwind`.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: Result<Boxed<'_, T>, ProviderFailure>,
) -> Result<T, ProviderFailure> {
    Bounded {
        call: CatchUnwind(fut?),
        timeout,
        started: real_now_ns(),
        timer: None,
    }
    .await
}

/// A plugin's future under a timeout whose timer is made at its first `Pending`. Like tokio's
/// `Timeout`, each poll polls the plugin's future once and then the timer, so a future that
/// yields is not polled again before it is woken.
struct Bounded<'a, T> {
    call: CatchUnwind<Boxed<'a, T>>,
    timeout: Duration,
    /// When the first poll began, on the counter clock.
    started: u64,
    /// Polled without the task's cooperative budget, as tokio's `Timeout` does when the call
    /// used it up, so that a call that keeps using it up still times out.
    timer: Option<Pin<Box<Unconstrained<Sleep>>>>,
}

impl<T> Future for Bounded<'_, T> {
    type Output = Result<T, ProviderFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(outcome) = Pin::new(&mut this.call).poll(cx) {
            return Poll::Ready(outcome.map_err(panic_failure));
        }
        let (timeout, started) = (this.timeout, this.started);
        let timer = this.timer.get_or_insert_with(|| {
            // What the first poll took counts against the timeout.
            let spent = Duration::from_nanos(real_now_ns().saturating_sub(started));
            Box::pin(tokio::task::unconstrained(tokio::time::sleep(
                timeout.saturating_sub(spent),
            )))
        });
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ProviderFailure::timeout(timeout))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Like [`guarded`], without a timeout: for the embedder's own code (the agent executor), whose
/// work may legitimately take long, but whose panic must still not take the host down.
pub(crate) async fn contained<'a, T>(make: impl FnOnce() -> Boxed<'a, T>) -> Result<T, ProviderFailure> {
    let fut = panic::catch_unwind(AssertUnwindSafe(make)).map_err(panic_failure)?;
    CatchUnwind(fut).await.map_err(panic_failure)
}

fn panic_failure(payload: Box<dyn Any + Send>) -> ProviderFailure {
    ProviderFailure::Panic {
        message: panic_message(payload.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contains_panics_at_creation_and_at_poll() {
        let at_creation = guarded::<()>(Duration::from_secs(1), || panic!("made badly")).await;
        assert_eq!(
            at_creation,
            Err(ProviderFailure::Panic {
                message: "made badly".into()
            })
        );
        let at_poll = guarded::<()>(Duration::from_secs(1), || {
            Box::pin(async { panic!("polled {}", "badly") })
        })
        .await;
        assert_eq!(
            at_poll,
            Err(ProviderFailure::Panic {
                message: "polled badly".into()
            })
        );
    }

    #[tokio::test]
    async fn bounds_a_hang() {
        let hang = guarded::<()>(Duration::from_millis(10), || Box::pin(std::future::pending())).await;
        assert_eq!(hang, Err(ProviderFailure::Timeout { after_ms: 10 }));
        let fine = guarded(Duration::from_millis(10), || Box::pin(async { 7 })).await;
        assert_eq!(fine, Ok(7));
        let yields_then_answers = guarded(Duration::from_millis(200), || {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                8
            })
        })
        .await;
        assert_eq!(yields_then_answers, Ok(8));
    }

    /// A call that returns `Pending` is not polled again until it is woken (a first version
    /// polled it twice in a row, so a plugin's first `yield_now` did not yield).
    #[tokio::test]
    async fn a_pending_call_is_polled_again_only_when_woken() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        use std::task::Waker;
        #[derive(Default)]
        struct Shared {
            polls: AtomicUsize,
            released: AtomicBool,
            waker: Mutex<Option<Waker>>,
        }
        struct Waits(Arc<Shared>);
        impl Future for Waits {
            type Output = usize;
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
                let polls = self.0.polls.fetch_add(1, Ordering::SeqCst) + 1;
                if self.0.released.load(Ordering::SeqCst) {
                    return Poll::Ready(polls);
                }
                *self.0.waker.lock().expect("lock") = Some(cx.waker().clone());
                Poll::Pending
            }
        }
        let shared = Arc::new(Shared::default());
        let releaser = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            releaser.released.store(true, Ordering::SeqCst);
            if let Some(waker) = releaser.waker.lock().expect("lock").take() {
                waker.wake();
            }
        });
        let polls = guarded(Duration::from_secs(5), || Box::pin(Waits(shared))).await;
        assert_eq!(polls, Ok(2), "polled once, then once after the wake");
    }

    /// The timer is armed at the first `Pending`: the time the first poll took counts against
    /// the timeout, so a plugin that blocks before it yields is not given the timeout again.
    #[tokio::test]
    async fn the_time_spent_before_the_first_yield_counts_against_the_timeout() {
        let started = std::time::Instant::now();
        let outcome = guarded::<()>(Duration::from_millis(200), || {
            Box::pin(async {
                std::thread::sleep(Duration::from_millis(150));
                std::future::pending::<()>().await;
            })
        })
        .await;
        assert_eq!(outcome, Err(ProviderFailure::Timeout { after_ms: 200 }));
        // 200 ms from the call; arming the timer at the yield would make it 350 ms.
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(300),
            "timed out after {took:?}, not 200 ms from the call"
        );
    }
}
