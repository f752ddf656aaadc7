//! Running untrusted plugin code: every call is bounded by a timeout and contained by
//! `catch_unwind`, both when the future is created and each time it is polled.
//!
//! The future adapter is plugin-api's [`CatchUnwind`], the one the plugin side of the stable
//! ABI uses too: the boxed futures `async_trait` produces are `Unpin`, so it needs no pin
//! projection and no `unsafe`, and no `futures-util` dependency.

use crate::error::ProviderFailure;
use plugin_api::ffi::CatchUnwind;
pub(crate) use plugin_api::ffi::panic_message;
use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::time::Duration;

/// A boxed future as `async_trait` methods return it.
type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs the future `make` returns under `timeout`, turning a panic (at creation or while
/// polled) or the timeout into a [`ProviderFailure`].
pub(crate) async fn guarded<'a, T>(
    timeout: Duration,
    make: impl FnOnce() -> Boxed<'a, T>,
) -> Result<T, ProviderFailure> {
    let fut = panic::catch_unwind(AssertUnwindSafe(make)).map_err(panic_failure)?;
    match tokio::time::timeout(timeout, CatchUnwind(fut)).await {
        Err(_elapsed) => Err(ProviderFailure::timeout(timeout)),
        Ok(Err(payload)) => Err(panic_failure(payload)),
        Ok(Ok(value)) => Ok(value),
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
    }
}
