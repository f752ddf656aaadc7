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
use std::task::Poll;
use std::time::Duration;

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
    let started = real_now_ns();
    let mut fut = CatchUnwind(fut?);
    // The first poll, with no timer: `Ready(None)` means the plugin's future is pending (and has
    // registered the waker, which the timed polls below keep).
    let first = std::future::poll_fn(|cx| match Pin::new(&mut fut).poll(cx) {
        Poll::Ready(outcome) => Poll::Ready(Some(outcome)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    let outcome = match first {
        Some(outcome) => outcome,
        None => {
            let spent = Duration::from_nanos(real_now_ns().saturating_sub(started));
            match tokio::time::timeout(timeout.saturating_sub(spent), fut).await {
                Err(_elapsed) => return Err(ProviderFailure::timeout(timeout)),
                Ok(outcome) => outcome,
            }
        }
    };
    outcome.map_err(panic_failure)
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
