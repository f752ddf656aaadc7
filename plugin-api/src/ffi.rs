//! The stable ABI: how a plugin compiled on its own, as a dynamic library, meets the host.
//!
//! Built on `abi_stable`: the library exports one root module ([`PluginModule`]) whose layout and
//! `plugin-api` version the host checks before calling anything in it. The module's single entry
//! point builds the plugin as an [`FfiPlugin`] trait object. Everything that crosses is
//! `abi_stable` types plus JSON text: errors, events and agents go over as the same JSON the
//! legacy C ABI uses, so the two ABIs share one contract and a host or plugin upgrade never has
//! to agree on the layout of a `serde_json::Value`. Requests, the hot path, cross as their
//! envelope's fields plus the data's JSON ([`FfiPlugin::process_request_parts`], [`FfiRequest`],
//! [`FfiResponse`]): parsing and writing the envelope as JSON on both sides was a quarter of a
//! call. A plugin still answers whole requests as JSON through [`FfiPlugin::process_request`],
//! for hosts built before the parts existed.
//!
//! Asynchronous methods return `async_ffi::FfiFuture`s: the plugin's future is polled by the
//! host's executor through a C-compatible vtable. The host's own services go the other way
//! through [`FfiHost`], so a dynamic plugin sleeps, spawns and reads the clock on the host's
//! runtime; its own copy of tokio (if it links one) is never asked to do anything, which is what
//! makes "no reactor running" impossible.
//!
//! Panics never cross. On the plugin side every exported method runs under `catch_unwind` (the
//! futures through [`CatchUnwind`]) and a panic becomes an error value. What cannot be contained
//! is a panic while *dropping* a plugin future or waker: `async_ffi` aborts then, as unwinding
//! out of a destructor across an FFI boundary has no sound alternative.
//!
//! Plugin authors use none of this directly: [`export_plugin!`](crate::export_plugin) writes the
//! exports. The host side (`orchestrator-core`) uses [`ForeignPlugin`] to call a loaded plugin
//! and [`host_to_ffi`] to give it host services.
//!
//! `unsafe_code` is allowed in this module only because `abi_stable`'s derives
//! (`StableAbi`, `#[sabi_trait]`) generate unsafe blocks; the code written here has none, and
//! the one unsafe call [`export_plugin!`](crate::export_plugin) writes carries its `SAFETY`
//! comment.
#![allow(unsafe_code)]
// `#[sabi_trait]` expands to impls inside a const block (abi_stable 0.11 predates this lint).
#![allow(non_local_definitions)]

use crate::{
    AgentInfo, AgentLoad, AgentStatus, BoxFuture, HealthStatus, Host, HostHandle, IntegrationRequest,
    IntegrationResponse, Interests, Operation, OrchestrationPlugin, OrchestratorEvent, PluginError, Verdict,
};
use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RStr, RString};
use abi_stable::{
    StableAbi, declare_root_module_statics, package_version_strings, sabi_trait, sabi_types::VersionStrings,
};
use async_ffi::FfiFuture;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The root module a plugin library exports: its one entry point.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Builds the plugin. `Err` carries a message (the constructor failed or panicked).
    #[sabi(last_prefix_field)]
    pub new_plugin: extern "C" fn() -> RResult<FfiPluginBox, RString>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "orchestrator_plugin";
    const NAME: &'static str = "orchestrator plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A plugin as it crosses the boundary. JSON in, JSON out; errors are [`PluginError`]s as JSON.
#[sabi_trait]
pub trait FfiPlugin: Send + Sync {
    /// `{"name", "version", "capabilities"}` as JSON.
    fn manifest(&self) -> RResult<RString, RString>;
    /// Initializes the plugin with the host's services.
    fn initialize(&self, host: FfiHostBox) -> FfiFuture<RResult<(), RString>>;
    /// An `IntegrationRequest` as JSON in, an `IntegrationResponse` as JSON out.
    fn process_request(&self, request: RString) -> FfiFuture<RResult<RString, RString>>;
    /// A `HealthStatus` as JSON.
    fn health_check(&self) -> FfiFuture<RString>;
    /// An `OrchestratorEvent` as JSON.
    fn on_event(&self, event: RString) -> FfiFuture<()>;
    /// Shuts the plugin down.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> FfiFuture<()>;
    /// An `Operation` as JSON, observed (see [`OrchestrationPlugin::observe`]).
    ///
    /// The methods from here on were added after the prefix. `abi_stable` lets a library's
    /// vtable have methods its host does not know, so a host built before one of them still
    /// loads a plugin built after (and never calls it); a plugin built before one of them is
    /// refused by a newer host's layout check, with a message to rebuild it.
    fn observe(&self, operation: RString);
    /// An `Operation` as JSON in, a `Verdict` as JSON out (see
    /// [`OrchestrationPlugin::intercept`]).
    fn intercept(&self, operation: RString) -> FfiFuture<RString>;
    /// [`process_request`](FfiPlugin::process_request) with the envelope as fields and only
    /// the data as JSON, both ways: half the JSON of a call. The host calls this one;
    /// `process_request` stays for hosts built before it.
    fn process_request_parts(&self, request: FfiRequest) -> FfiFuture<RResult<FfiResponse, RString>>;
}

/// An [`IntegrationRequest`] as it crosses in [`FfiPlugin::process_request_parts`]: the
/// envelope as fields, the capability's input as JSON.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiRequest {
    /// [`IntegrationRequest::capability`].
    pub capability: RString,
    /// [`IntegrationRequest::agent_id`].
    pub agent_id: ROption<RString>,
    /// [`IntegrationRequest::correlation_id`].
    pub correlation_id: ROption<RString>,
    /// [`IntegrationRequest::data`] as JSON.
    pub data: RString,
}

/// An [`IntegrationResponse`] as it crosses back from [`FfiPlugin::process_request_parts`]:
/// what the plugin decides (the host fills in the rest), with the data as JSON.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiResponse {
    /// [`IntegrationResponse::success`].
    pub success: bool,
    /// [`IntegrationResponse::data`] as JSON.
    pub data: RString,
    /// [`IntegrationResponse::error`].
    pub error: ROption<RString>,
}

/// An owned [`FfiPlugin`] trait object.
pub type FfiPluginBox = FfiPlugin_TO<'static, RBox<()>>;

/// The host's services as they cross the boundary (see [`Host`]).
#[sabi_trait]
pub trait FfiHost: Send + Sync {
    /// This plugin's configuration as JSON.
    fn plugin_config(&self, plugin: RStr<'_>) -> RString;
    /// Every agent, as a JSON array of `AgentInfo`.
    fn agents(&self) -> RString;
    /// One agent as JSON, if registered.
    fn agent(&self, id: RStr<'_>) -> ROption<RString>;
    /// Sets an agent's status (`"active"` ...); `Err` is a `PluginError` as JSON.
    fn set_agent_status(&self, id: RStr<'_>, status: RStr<'_>) -> RResult<(), RString>;
    /// Calls a capability: request JSON in, response JSON or `PluginError` JSON out.
    fn call(&self, request: RString) -> FfiFuture<RResult<RString, RString>>;
    /// Publishes an `OrchestratorEvent` given as JSON.
    fn emit(&self, event: RString);
    /// Wall-clock milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;
    /// Monotonic nanoseconds.
    fn monotonic_ns(&self) -> u64;
    /// Runs a task on the host's runtime.
    fn spawn(&self, task: FfiFuture<()>);
    /// Completes after `nanos` nanoseconds, on the host's timer.
    #[sabi(last_prefix_field)]
    fn sleep(&self, nanos: u64) -> FfiFuture<()>;
    /// Every agent's id, status and load, as a JSON array of `AgentLoad`. (Added after the
    /// prefix: a plugin built before it existed still loads.)
    fn agent_loads(&self) -> RString;
    /// Replaces the plugin's operation feeds: `Interests` as JSON. (Added after the prefix.)
    fn set_interests(&self, interests: RString);
}

/// A shared [`FfiHost`] trait object.
pub type FfiHostBox = FfiHost_TO<'static, RArc<()>>;

/// What [`FfiPlugin::manifest`] describes: a plugin's name, version and capabilities. The legacy
/// C ABI's `orch_plugin_manifest` returns the same JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginManifest {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// The capabilities it serves.
    pub capabilities: Vec<String>,
    /// C ABI only: the plugin promises that `orch_plugin_process` returns promptly and never
    /// blocks, so the host may call it directly on its async threads (faster) rather than on
    /// its blocking pool (where a call that hangs can be abandoned). Ignored for the stable ABI.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nonblocking: bool,
    /// Stable ABI only: the operation feeds the plugin wants at registration (see
    /// [`OrchestrationPlugin::interests`]). Absent in the manifest of a plugin built before
    /// feeds existed, which therefore never receives them.
    #[serde(default, skip_serializing_if = "Interests::is_empty")]
    pub interests: Interests,
}

// ----- panic containment ------------------------------------------------------------------

/// Polls an `Unpin` future inside `catch_unwind`: a panic while polling becomes `Err(payload)`.
/// Used on both sides of the boundary.
#[derive(Debug)]
pub struct CatchUnwind<F>(pub F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_owned()
    }
}

/// The largest answer the host reads from a dynamic plugin (16 MiB): a bigger one is refused
/// unread, so that a plugin gone wrong cannot make the host parse without bound.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

fn encode_error(error: &PluginError) -> RString {
    serde_json::to_string(error)
        .unwrap_or_else(|_| format!("{{\"kind\":\"internal\",\"message\":{:?}}}", error.message))
        .into()
}

/// Reads a `PluginError` sent as JSON; text that is not one becomes an internal error saying it.
pub fn decode_error(text: &str) -> PluginError {
    serde_json::from_str(text).unwrap_or_else(|_| PluginError::new(text.to_owned()))
}

fn panicked(payload: Box<dyn Any + Send>) -> PluginError {
    PluginError::new(format!("plugin panicked: {}", panic_message(payload.as_ref())))
}

/// Runs `make`'s future to completion with panics (at creation and while polled) contained.
async fn contained<T, Fut>(make: impl FnOnce() -> Fut) -> Result<T, PluginError>
where
    Fut: Future<Output = Result<T, PluginError>> + Send,
{
    let fut = panic::catch_unwind(AssertUnwindSafe(make)).map_err(panicked)?;
    // Pinned in place (this future is itself boxed by `FfiFuture`): no allocation per call.
    CatchUnwind(std::pin::pin!(fut)).await.map_err(panicked)?
}

// ----- plugin side: exporting an OrchestrationPlugin --------------------------------------

/// Wraps a plugin for export; what [`export_plugin!`](crate::export_plugin) builds.
struct ExportedPlugin<P> {
    plugin: Arc<P>,
}

impl<P: OrchestrationPlugin> FfiPlugin for ExportedPlugin<P> {
    fn manifest(&self) -> RResult<RString, RString> {
        let plugin = &self.plugin;
        let manifest = panic::catch_unwind(AssertUnwindSafe(|| PluginManifest {
            name: plugin.name().to_owned(),
            version: plugin.version().to_owned(),
            capabilities: plugin.capabilities(),
            nonblocking: false,
            interests: plugin.interests(),
        }));
        match manifest {
            Ok(m) => match serde_json::to_string(&m) {
                Ok(json) => RResult::ROk(json.into()),
                Err(e) => RResult::RErr(encode_error(&PluginError::new(e.to_string()))),
            },
            Err(payload) => RResult::RErr(encode_error(&panicked(payload))),
        }
    }

    fn initialize(&self, host: FfiHostBox) -> FfiFuture<RResult<(), RString>> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let result = contained(|| async move {
                let name = plugin.name().to_owned();
                let handle = HostHandle::new(name, Arc::new(ForeignHost { ffi: host }));
                plugin.initialize(handle).await
            })
            .await;
            result.map_err(|e| encode_error(&e)).into()
        })
    }

    fn process_request(&self, request: RString) -> FfiFuture<RResult<RString, RString>> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let result = contained(|| async move {
                // The host serialized it: failing to read it is a host/plugin mismatch, not the
                // caller's fault, so it must not stop the host's fallback.
                let request: IntegrationRequest = serde_json::from_str(&request)
                    .map_err(|e| PluginError::new(format!("the host sent a request this plugin cannot read: {e}")))?;
                let response = plugin.process_request(request).await?;
                serde_json::to_string(&response)
                    .map_err(|e| PluginError::new(format!("response does not serialize: {e}")))
            })
            .await;
            match result {
                Ok(json) => RResult::ROk(json.into()),
                Err(e) => RResult::RErr(encode_error(&e)),
            }
        })
    }

    fn health_check(&self) -> FfiFuture<RString> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let health = contained(|| async move { Ok(plugin.health_check().await) })
                .await
                .unwrap_or_else(|e| HealthStatus::unhealthy(e.message));
            serde_json::to_string(&health).unwrap_or_default().into()
        })
    }

    fn on_event(&self, event: RString) -> FfiFuture<()> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            // An event this build does not know (from a newer host) is skipped.
            if let Ok(event) = serde_json::from_str::<OrchestratorEvent>(&event) {
                let _ = contained(|| async move {
                    plugin.on_event(&event).await;
                    Ok(())
                })
                .await;
            }
        })
    }

    fn shutdown(&self) -> FfiFuture<()> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let _ = contained(|| async move {
                plugin.shutdown().await;
                Ok(())
            })
            .await;
        })
    }

    fn observe(&self, operation: RString) {
        // Unreadable (a kind from a newer host) is skipped, like an unknown event.
        if let Ok(operation) = serde_json::from_str::<Operation<'_>>(&operation) {
            let plugin = &self.plugin;
            let _ = panic::catch_unwind(AssertUnwindSafe(|| plugin.observe(&operation)));
        }
    }

    fn process_request_parts(&self, request: FfiRequest) -> FfiFuture<RResult<FfiResponse, RString>> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let result = contained(|| async move {
                // As in `process_request`: data the host wrote and this plugin cannot read is a
                // host/plugin mismatch, not the caller's fault.
                let data = serde_json::from_str(&request.data)
                    .map_err(|e| PluginError::new(format!("the host sent data this plugin cannot read: {e}")))?;
                let request = IntegrationRequest {
                    capability: request.capability.into_string(),
                    agent_id: request.agent_id.into_option().map(RString::into_string),
                    correlation_id: request.correlation_id.into_option().map(RString::into_string),
                    data,
                };
                let response = plugin.process_request(request).await?;
                let data = serde_json::to_string(&response.data)
                    .map_err(|e| PluginError::new(format!("response does not serialize: {e}")))?;
                Ok(FfiResponse {
                    success: response.success,
                    data: data.into(),
                    error: response.error.map(RString::from).into(),
                })
            })
            .await;
            match result {
                Ok(response) => RResult::ROk(response),
                Err(e) => RResult::RErr(encode_error(&e)),
            }
        })
    }

    fn intercept(&self, operation: RString) -> FfiFuture<RString> {
        let plugin = Arc::clone(&self.plugin);
        FfiFuture::new(async move {
            let verdict = match serde_json::from_str::<Operation<'static>>(&operation) {
                // A panicking interceptor allows, as the host does for static plugins.
                Ok(operation) => contained(|| async move { Ok(plugin.intercept(&operation).await) })
                    .await
                    .unwrap_or(Verdict::Allow),
                Err(_) => Verdict::Allow,
            };
            serde_json::to_string(&verdict)
                .unwrap_or_else(|_| r#"{"verdict":"allow"}"#.to_owned())
                .into()
        })
    }
}

/// The result type of [`PluginModule::new_plugin`].
pub type NewPluginResult = RResult<FfiPluginBox, RString>;

/// Builds the plugin with `constructor` and wraps it for export; a panicking constructor
/// becomes an error. Called by the code [`export_plugin!`](crate::export_plugin) writes.
#[doc(hidden)]
pub fn new_exported_plugin<P: OrchestrationPlugin>(constructor: fn() -> P) -> NewPluginResult {
    match panic::catch_unwind(constructor) {
        Ok(plugin) => RResult::ROk(FfiPlugin_TO::from_value(
            ExportedPlugin {
                plugin: Arc::new(plugin),
            },
            TD_Opaque,
        )),
        Err(payload) => {
            RResult::RErr(format!("the plugin constructor panicked: {}", panic_message(payload.as_ref())).into())
        }
    }
}

/// The root module for a library whose plugins are built by `new_plugin`. Called by the code
/// [`export_plugin!`](crate::export_plugin) writes.
#[doc(hidden)]
pub fn plugin_module(new_plugin: extern "C" fn() -> NewPluginResult) -> PluginModuleRef {
    PluginModule { new_plugin }.leak_into_prefix()
}

/// The host as a dynamic plugin sees it: every service forwarded through [`FfiHost`].
struct ForeignHost {
    ffi: FfiHostBox,
}

impl Host for ForeignHost {
    fn plugin_config(&self, plugin: &str) -> Value {
        serde_json::from_str(&self.ffi.plugin_config(plugin.into())).unwrap_or(Value::Null)
    }

    fn agents(&self) -> Vec<AgentInfo> {
        serde_json::from_str(&self.ffi.agents()).unwrap_or_default()
    }

    fn agent_loads(&self) -> Vec<AgentLoad> {
        serde_json::from_str(&self.ffi.agent_loads()).unwrap_or_default()
    }

    fn agent(&self, id: &str) -> Option<AgentInfo> {
        self.ffi
            .agent(id.into())
            .into_option()
            .and_then(|json| serde_json::from_str(&json).ok())
    }

    fn set_agent_status(&self, id: &str, status: AgentStatus) -> Result<(), PluginError> {
        self.ffi
            .set_agent_status(id.into(), status.as_str().into())
            .into_result()
            .map_err(|e| decode_error(&e))
    }

    fn call(
        &self,
        _caller: &str,
        request: IntegrationRequest,
    ) -> BoxFuture<'static, Result<IntegrationResponse, PluginError>> {
        let json = match serde_json::to_string(&request) {
            Ok(json) => json,
            Err(e) => return Box::pin(std::future::ready(Err(PluginError::new(e.to_string())))),
        };
        let call = self.ffi.call(json.into());
        Box::pin(async move {
            match call.await.into_result() {
                Ok(json) => serde_json::from_str(&json)
                    .map_err(|e| PluginError::new(format!("host answered with an unreadable response: {e}"))),
                Err(e) => Err(decode_error(&e)),
            }
        })
    }

    fn emit(&self, event: OrchestratorEvent) {
        if let Ok(json) = serde_json::to_string(&event) {
            self.ffi.emit(json.into());
        }
    }

    fn now_unix_ms(&self) -> u64 {
        self.ffi.now_unix_ms()
    }

    fn monotonic_ns(&self) -> u64 {
        self.ffi.monotonic_ns()
    }

    fn spawn(&self, task: BoxFuture<'static, ()>) {
        // A panic in the task ends the task, on this side of the boundary.
        self.ffi.spawn(FfiFuture::new(async move {
            let _ = CatchUnwind(task).await;
        }));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Box::pin(self.ffi.sleep(nanos))
    }

    fn set_interests(&self, _plugin: &str, interests: Interests) {
        if let Ok(json) = serde_json::to_string(&interests) {
            self.ffi.set_interests(json.into());
        }
    }
}

// ----- host side: calling a loaded plugin ------------------------------------------------------

/// Gives a plugin behind the ABI the host's services of `handle`.
pub fn host_to_ffi(handle: HostHandle) -> FfiHostBox {
    FfiHost_TO::from_ptr(RArc::new(HostBridge { handle }), TD_Opaque)
}

/// The host's services, offered across the boundary.
struct HostBridge {
    handle: HostHandle,
}

/// Runs host code on behalf of a plugin across the boundary. The vtable's `extern "C"` frames
/// cannot unwind, so a panic here would abort the process; it becomes `fallback` instead.
fn host_side<T>(fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| fallback())
}

fn host_panicked() -> RString {
    encode_error(&PluginError::new("the host panicked while serving the plugin"))
}

impl FfiHost for HostBridge {
    fn plugin_config(&self, plugin: RStr<'_>) -> RString {
        host_side(
            || "null".into(),
            || {
                // A plugin reads its own configuration only.
                let config = if plugin.as_str() == self.handle.plugin_name() {
                    self.handle.config()
                } else {
                    Value::Null
                };
                config.to_string().into()
            },
        )
    }

    fn agent_loads(&self) -> RString {
        host_side(
            || "[]".into(),
            || {
                serde_json::to_string(&self.handle.agent_loads())
                    .unwrap_or_else(|_| "[]".into())
                    .into()
            },
        )
    }

    fn agents(&self) -> RString {
        host_side(
            || "[]".into(),
            || {
                serde_json::to_string(&self.handle.agents())
                    .unwrap_or_else(|_| "[]".into())
                    .into()
            },
        )
    }

    fn agent(&self, id: RStr<'_>) -> ROption<RString> {
        host_side(
            || ROption::RNone,
            || {
                self.handle
                    .agent(id.as_str())
                    .and_then(|a| serde_json::to_string(&a).ok())
                    .map(RString::from)
                    .into()
            },
        )
    }

    fn set_agent_status(&self, id: RStr<'_>, status: RStr<'_>) -> RResult<(), RString> {
        host_side(
            || RResult::RErr(host_panicked()),
            || {
                let result = status
                    .as_str()
                    .parse::<AgentStatus>()
                    .map_err(|e| PluginError::invalid_request(e.to_string()))
                    .and_then(|status| self.handle.set_agent_status(id.as_str(), status));
                result.map_err(|e| encode_error(&e)).into()
            },
        )
    }

    fn call(&self, request: RString) -> FfiFuture<RResult<RString, RString>> {
        let handle = self.handle.clone();
        // Panics while the future is polled are caught by async-ffi and re-raised on the
        // plugin's side, where `contained` turns them into an error.
        FfiFuture::new(async move {
            let request: IntegrationRequest = match serde_json::from_str(&request) {
                Ok(r) => r,
                Err(e) => {
                    return RResult::RErr(encode_error(&PluginError::invalid_request(format!(
                        "request is not an IntegrationRequest: {e}"
                    ))));
                }
            };
            match handle.call(request).await {
                Ok(response) => serde_json::to_string(&response)
                    .map(RString::from)
                    .map_err(|e| encode_error(&PluginError::new(e.to_string())))
                    .into(),
                Err(e) => RResult::RErr(encode_error(&e)),
            }
        })
    }

    fn emit(&self, event: RString) {
        host_side(
            || (),
            || {
                if let Ok(event) = serde_json::from_str::<OrchestratorEvent>(&event) {
                    match event {
                        // A plugin speaks for itself only.
                        OrchestratorEvent::Custom { name, data, .. } => self.handle.emit(name, data),
                        other => self
                            .handle
                            .emit("forwarded", serde_json::to_value(other).unwrap_or_default()),
                    }
                }
            },
        )
    }

    fn now_unix_ms(&self) -> u64 {
        host_side(|| 0, || self.handle.now_unix_ms())
    }

    fn monotonic_ns(&self) -> u64 {
        host_side(|| 0, || self.handle.monotonic_ns())
    }

    fn spawn(&self, task: FfiFuture<()>) {
        // `task` moves into the closure; if spawning panics it is dropped on this side.
        host_side(|| (), move || self.handle.spawn(task))
    }

    fn sleep(&self, nanos: u64) -> FfiFuture<()> {
        host_side(
            || FfiFuture::new(std::future::ready(())),
            || FfiFuture::new(self.handle.sleep(Duration::from_nanos(nanos))),
        )
    }

    fn set_interests(&self, interests: RString) {
        host_side(
            || (),
            || {
                if let Ok(interests) = serde_json::from_str::<Interests>(&interests) {
                    self.handle.set_interests(interests);
                }
            },
        )
    }
}

/// A plugin loaded through the stable ABI, as an ordinary [`OrchestrationPlugin`] for the host.
pub struct ForeignPlugin {
    ffi: FfiPluginBox,
    manifest: PluginManifest,
}

impl std::fmt::Debug for ForeignPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForeignPlugin")
            .field("manifest", &self.manifest)
            .finish_non_exhaustive()
    }
}

impl ForeignPlugin {
    /// Builds the plugin through `module` and reads its manifest.
    pub fn new(module: PluginModuleRef) -> Result<Self, PluginError> {
        let new_plugin = module.new_plugin();
        let ffi = new_plugin()
            .into_result()
            .map_err(|e| PluginError::new(e.into_string()))?;
        let manifest = ffi.manifest().into_result();
        within_limit(manifest.as_ref().map_or_else(|e| e.len(), |m| m.len()))?;
        let manifest = manifest.map_err(|e| decode_error(&e))?;
        let manifest: PluginManifest = serde_json::from_str(&manifest)
            .map_err(|e| PluginError::new(format!("the plugin's manifest is unreadable: {e}")))?;
        Ok(Self { ffi, manifest })
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &PluginManifest {
        &self.manifest
    }
}

#[async_trait]
impl OrchestrationPlugin for ForeignPlugin {
    fn name(&self) -> &str {
        &self.manifest.name
    }

    fn version(&self) -> &str {
        &self.manifest.version
    }

    fn capabilities(&self) -> Vec<String> {
        self.manifest.capabilities.clone()
    }

    async fn initialize(&self, host: HostHandle) -> Result<(), PluginError> {
        self.ffi
            .initialize(host_to_ffi(host))
            .await
            .into_result()
            .map_err(|e| decode_error(&e))
    }

    /// Through [`FfiPlugin::process_request_parts`]: the envelope as fields, the data as JSON
    /// each way.
    async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let data = serde_json::to_string(&request.data).map_err(|e| PluginError::new(e.to_string()))?;
        let parts = FfiRequest {
            capability: request.capability.into(),
            agent_id: request.agent_id.map(RString::from).into(),
            correlation_id: request.correlation_id.map(RString::from).into(),
            data: data.into(),
        };
        let answer = match self.ffi.process_request_parts(parts).await.into_result() {
            Ok(answer) => answer,
            Err(error) => {
                within_limit(error.len())?;
                return Err(decode_error(&error));
            }
        };
        within_limit(answer.data.len() + answer.error.as_ref().map_or(0, |e| e.len()))?;
        let data = serde_json::from_str(&answer.data)
            .map_err(|e| PluginError::new(format!("the plugin answered with unreadable data: {e}")))?;
        let mut response = IntegrationResponse::ok(data);
        response.success = answer.success;
        response.error = answer.error.into_option().map(RString::into_string);
        Ok(response)
    }

    async fn health_check(&self) -> HealthStatus {
        let json = self.ffi.health_check().await;
        if let Err(e) = within_limit(json.len()) {
            return HealthStatus::unhealthy(e.message);
        }
        serde_json::from_str(&json)
            .unwrap_or_else(|e| HealthStatus::unhealthy(format!("unreadable health status: {e}")))
    }

    async fn on_event(&self, event: &OrchestratorEvent) {
        if let Ok(json) = serde_json::to_string(event) {
            self.ffi.on_event(json.into()).await;
        }
    }

    async fn shutdown(&self) {
        self.ffi.shutdown().await;
    }

    fn interests(&self) -> Interests {
        self.manifest.interests
    }

    fn observe(&self, operation: &Operation<'_>) {
        // Only plugins that declared interests are observed (see `FfiPlugin::observe`).
        if let Ok(json) = serde_json::to_string(operation) {
            self.ffi.observe(json.into());
        }
    }

    async fn intercept(&self, operation: &Operation<'_>) -> Verdict {
        let Ok(json) = serde_json::to_string(operation) else {
            return Verdict::Allow;
        };
        let answer = self.ffi.intercept(json.into()).await;
        // An answer too big to read is as good as none: the operation goes ahead (fail-open,
        // as for an interceptor that fails).
        if within_limit(answer.len()).is_err() {
            return Verdict::Allow;
        }
        serde_json::from_str(&answer).unwrap_or(Verdict::Allow)
    }
}

/// Refuses, unread, an answer of `bytes` over [`MAX_RESPONSE_BYTES`].
fn within_limit(bytes: usize) -> Result<(), PluginError> {
    if bytes > MAX_RESPONSE_BYTES {
        return Err(PluginError::new(format!(
            "the plugin answered with {bytes} bytes, over the host's limit of {MAX_RESPONSE_BYTES}; not read"
        )));
    }
    Ok(())
}

/// The name of the symbol that holds an `abi_stable` library's header: what
/// [`export_plugin!`](crate::export_plugin) exports. Checked against `abi_stable`'s own constant
/// in this module's tests.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports an [`OrchestrationPlugin`] from a `cdylib` through the stable ABI.
///
/// Give it a constructor: any `fn() -> P` where `P: OrchestrationPlugin`, such as
/// `MyPlugin::default` or `MyPlugin::new`. Put it once in the crate root of a crate built with
/// `crate-type = ["cdylib", "rlib"]`; the crate needs no dependency besides `plugin-api` and
/// `async-trait`.
///
/// ```ignore
/// plugin_api::export_plugin!(MyPlugin::default);
/// ```
///
/// A panic in the constructor or in any plugin method becomes an error the host sees; it never
/// unwinds into the host.
///
/// The macro defines one exported symbol (the `abi_stable` library header), so at most one crate
/// that invokes it can be linked into a binary. A plugin that may be linked statically beside
/// other plugins should keep its library an `rlib` and invoke the macro in a separate `cdylib`
/// target, e.g. an `[[example]]` with `crate-type = ["cdylib"]`.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:expr $(,)?) => {
        const _: () = {
            extern "C" fn __orchestrator_new_plugin() -> $crate::ffi::NewPluginResult {
                $crate::ffi::new_exported_plugin($constructor)
            }

            fn __orchestrator_root_module() -> $crate::ffi::PluginModuleRef {
                $crate::ffi::plugin_module(__orchestrator_new_plugin)
            }

            extern "C" fn __orchestrator_erased_root_module()
            -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    __orchestrator_root_module,
                )
            }

            /// The `abi_stable` library header: the symbol the host looks up first.
            #[allow(unsafe_code, non_upper_case_globals)]
            #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
            pub static __ORCHESTRATOR_LIB_HEADER:
                $crate::__private::abi_stable::library::LibHeader = {
                // SAFETY: `from_constructor` requires the constructor to return the root module
                // type given as `M`; `__orchestrator_root_module` returns `PluginModuleRef`, the
                // type named here, and the layout is checked by the host when it loads.
                unsafe {
                    $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                        $crate::ffi::PluginModuleRef,
                    >(
                        __orchestrator_erased_root_module,
                        $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(ROOT_MODULE_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }

    /// Answers with what it received; "fail" fails well-formed, "refuse" is an invalid
    /// request, "panic" panics.
    struct Echo;

    #[async_trait]
    impl OrchestrationPlugin for Echo {
        fn name(&self) -> &str {
            "Echo"
        }
        fn capabilities(&self) -> Vec<String> {
            vec!["echo".into()]
        }
        async fn initialize(&self, _host: HostHandle) -> Result<(), PluginError> {
            Ok(())
        }
        async fn process_request(&self, request: IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
            match request.capability.as_str() {
                "fail" => Ok(IntegrationResponse::failure("it went wrong: \"quoted\" ünïcode")),
                "huge" => Ok(IntegrationResponse::ok(Value::String("x".repeat(MAX_RESPONSE_BYTES)))),
                "huge_error" => Err(PluginError::new("x".repeat(MAX_RESPONSE_BYTES + 1))),
                "refuse" => Err(PluginError::invalid_request("no such field")),
                "panic" => panic!("echo panicked"),
                _ => Ok(IntegrationResponse::ok(serde_json::json!({
                    "capability": request.capability,
                    "agent_id": request.agent_id,
                    "correlation_id": request.correlation_id,
                    "data": request.data,
                }))),
            }
        }
        async fn health_check(&self) -> HealthStatus {
            HealthStatus::healthy()
        }
    }

    /// The output of a future that completes in one poll, as every call of the in-process
    /// `Echo` does.
    fn run<F: Future>(future: F) -> F::Output {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(future).poll(&mut cx) {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("an in-process call of Echo waited"),
        }
    }

    /// `Echo`, exported and called as the host calls a dynamic plugin.
    fn foreign_echo() -> ForeignPlugin {
        let ffi = new_exported_plugin(|| Echo).into_result().expect("builds");
        let manifest = serde_json::from_str(&ffi.manifest().into_result().expect("a manifest")).expect("reads");
        ForeignPlugin { ffi, manifest }
    }

    /// How a host built before `process_request_parts` calls a plugin: the whole request as
    /// JSON through `process_request`.
    fn call_as_json(ffi: &FfiPluginBox, request: &IntegrationRequest) -> Result<IntegrationResponse, PluginError> {
        let json = serde_json::to_string(request).expect("serializes");
        match run(ffi.process_request(json.into())).into_result() {
            Ok(json) => Ok(serde_json::from_str(&json).expect("a response")),
            Err(e) => Err(decode_error(&e)),
        }
    }

    /// The host calls plugins by parts; a host built before that calls them with JSON. A
    /// plugin must give both the same answers.
    #[test]
    fn requests_as_parts_and_as_json_get_the_same_answers() {
        let host = foreign_echo();
        let by_json = new_exported_plugin(|| Echo).into_result().expect("builds");
        let requests = [
            IntegrationRequest::new(
                "echo",
                serde_json::json!({"text": "a \"b\" \u{1F600}", "n": [1, 2.5, null]}),
            ),
            IntegrationRequest::new("echo", Value::Null)
                .with_agent("agent-1")
                .with_correlation_id("c-1"),
            IntegrationRequest::new("fail", serde_json::json!({})),
            IntegrationRequest::new("refuse", serde_json::json!({})),
            IntegrationRequest::new("panic", serde_json::json!({})),
        ];
        for request in requests {
            let by_parts = run(host.process_request(request.clone()));
            assert_eq!(by_parts, call_as_json(&by_json, &request), "{}", request.capability);
            if request.capability == "echo" {
                let data = by_parts.expect("answers").data;
                assert_eq!(data["data"], request.data);
                assert_eq!(data["agent_id"], serde_json::json!(request.agent_id));
                assert_eq!(data["correlation_id"], serde_json::json!(request.correlation_id));
            }
        }
    }

    /// An answer over the host's limit, as data or as an error, is refused unread.
    #[test]
    fn answers_over_the_limit_are_refused_unread() {
        let host = foreign_echo();
        for capability in ["huge", "huge_error"] {
            let error =
                run(host.process_request(IntegrationRequest::new(capability, Value::Null))).expect_err("refused");
            let start: String = error.message.chars().take(80).collect();
            assert!(error.message.contains("over the host's limit"), "{capability}: {start}");
            assert!(error.message.len() < 200, "{capability}: not read");
        }
    }

    #[test]
    fn errors_round_trip_as_json() {
        let e = PluginError::invalid_request("bad \"input\"");
        assert_eq!(decode_error(&encode_error(&e)), e);
        assert_eq!(decode_error("plain text"), PluginError::new("plain text"));
    }
}
