//! The Redis backend's own I/O runtime.
//!
//! The `redis` crate's async client runs on Tokio. A plugin must not lean on the host's runtime
//! implicitly: loaded from a dynamic library, the plugin has its own copy of Tokio's
//! thread-locals, and a socket opened there panics with "no reactor running". So the backend
//! owns a small runtime (one worker thread, named `orch-shared-state-io`) and runs every Redis
//! call on it; the caller awaits the result from whatever executor it is on. The cost is one
//! hand-off between threads per call, a few microseconds beside a network round trip, and the
//! same code then works linked statically and loaded dynamically.

use crate::store::StoreError;
use std::future::Future;
use std::time::Duration;
use tokio::runtime::{Builder, Handle, Runtime};

pub(crate) struct IoRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl IoRuntime {
    pub(crate) fn new() -> Result<Self, StoreError> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("orch-shared-state-io")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot start the Redis I/O thread: {e}")))?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `call` on the I/O runtime, bounded by `timeout`.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        describe: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(timeout, call).await });
        match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => Err(StoreError::Unavailable {
                url: describe(),
                message: format!("no answer within {} ms", timeout.as_millis()),
            }),
            Err(join) => Err(StoreError::Backend(format!("the Redis call failed: {join}"))),
        }
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from inside an async context panics; shutting it down in the
        // background never does (the store may be dropped on the host's runtime).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
