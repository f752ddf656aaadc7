//! Loading plugins from shared libraries: the stable ABI first, then the legacy C ABI.
//!
//! A library is opened once and never unloaded: `abi_stable` leaks what it loads by design
//! (a plugin's statics, thread-locals and vtables may be referenced long after the last call),
//! and the C path follows the same rule. Replacing a plugin (hot swap) therefore maps the new
//! library beside the old one; the old one stays mapped, idle, for the life of the process.
//!
//! Each stable-ABI library is read with `lib_header_from_path(..)?.init_root_module()`, never
//! `RootModule::load_from*`, which caches one module per interface type and would hand a second
//! plugin the first one back. Before any plugin code runs, the host checks the `abi_stable`
//! header, the `plugin-api` version the library was built against (for `0.y` versions, the
//! minor must match) and the layout of the root module. An incompatibility is reported in one
//! line (expected, found, file); `abi_stable`'s full layout report, often hundreds of lines, is
//! kept in the error for `--verbose` output.
//!
//! Loading a library runs its initialisers: loading is a trust decision, made by whoever put the
//! file in the plugin directory.
//!
//! The dynamic loader hands back the library it already has for a path it has seen, even if the
//! file was replaced since. So the second and later loads of one path map a fresh copy of the
//! file (in the temporary directory), which makes a hot swap to a new build at the same path
//! run the new code. The copy is deleted as soon as it is mapped (or found unloadable): the
//! mapping outlives the file on Unix, so no copy is left on disk, however many loads a process
//! makes. (Windows refuses to delete a mapped library; there the copy stays until the process
//! ends and the temporary directory is cleaned.) Replace a plugin file by renaming the new one over it, never by writing
//! into it: a library being rewritten while mapped can crash the process.

use crate::c_abi::CAbiPlugin;
use crate::error::LoadError;
use abi_stable::library::{LibraryError, RootModule, lib_header_from_path};
use plugin_api::OrchestrationPlugin;
use plugin_api::ffi::{ForeignPlugin, PluginManifest, PluginModuleRef};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which binary interface a plugin library exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginAbi {
    /// The `abi_stable` interface of `plugin-api` (`export_plugin!`).
    StableAbi,
    /// The legacy C interface (`orch_plugin_*` functions, JSON in and out).
    CAbi,
}

/// What a plugin library holds, as found by [`inspect_plugin`] (and by every load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PluginInspection {
    /// The file.
    pub path: PathBuf,
    /// Its interface.
    pub abi: PluginAbi,
    /// The interface version it was built against: `plugin-api`'s version for the stable ABI,
    /// the C ABI's version number otherwise.
    pub interface_version: String,
    /// The plugin's name, version and capabilities.
    pub manifest: PluginManifest,
}

/// A plugin library opened and its plugin built, not registered with any orchestrator: for
/// tools (`orchestrator plugin check`) and conformance tests that call the plugin directly.
/// [`Orchestrator::load_plugin`](crate::Orchestrator::load_plugin) is how an application loads
/// one.
pub struct OpenedPlugin {
    pub(crate) plugin: Arc<dyn OrchestrationPlugin>,
    pub(crate) inspection: PluginInspection,
}

impl std::fmt::Debug for OpenedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedPlugin")
            .field("inspection", &self.inspection)
            .finish_non_exhaustive()
    }
}

impl OpenedPlugin {
    /// The plugin, callable as any [`OrchestrationPlugin`].
    pub fn plugin(&self) -> &dyn OrchestrationPlugin {
        self.plugin.as_ref()
    }

    /// What the library exports.
    pub fn inspection(&self) -> &PluginInspection {
        &self.inspection
    }
}

/// The file name suffix of shared libraries on this platform (`so`, `dylib`, `dll`).
pub const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// The path to hand to the dynamic loader for `path`: the file itself the first time, a fresh
/// copy after that. The loader returns an already-loaded library for a path it has seen, even
/// when the file has been replaced since, so reloading a path (a hot swap to a new build put
/// in place of the old) would otherwise silently run the old code.
fn loadable_copy(path: &Path) -> Result<PathBuf, LoadError> {
    static LOADED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    if !loaded.contains(&canonical) {
        loaded.push(canonical);
        return Ok(path.to_owned());
    }
    drop(loaded);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("orchestrator-plugins-{}", std::process::id()));
    let copy = dir.join(format!(
        "{n}-{}",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("plugin")
    ));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::copy(path, &copy))
        .map_err(|source| LoadError::NotFound {
            path: path.to_owned(),
            source,
        })?;
    Ok(copy)
}

/// Opens the plugin library at `path` and builds its plugin, trying the stable ABI, then the
/// C ABI, without registering it anywhere. The library stays mapped for the life of the process;
/// opening the same path again maps a fresh copy of the file (see the module docs).
pub fn open_plugin(path: &Path) -> Result<OpenedPlugin, LoadError> {
    let path = path.to_owned();
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => {
            return Err(LoadError::NotALibrary {
                path,
                reason: "it is not a regular file".into(),
            });
        }
        Err(e) => return Err(LoadError::NotFound { path, source: e }),
    }
    let load_path = loadable_copy(&path)?;
    let opened = open_mapped(path.clone(), &load_path);
    if load_path != path {
        // Mapped (or refused) by now: the copy on disk has done its work.
        let _ = std::fs::remove_file(&load_path);
        if let Some(dir) = load_path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    opened
}

/// Opens the library at `load_path` (the user's `path`, or a fresh copy of it) and builds its
/// plugin; errors and the inspection name the user's `path`.
fn open_mapped(path: PathBuf, load_path: &Path) -> Result<OpenedPlugin, LoadError> {
    match lib_header_from_path(load_path) {
        Ok(header) => {
            let found = header.version_strings().version.as_str().to_owned();
            let expected = PluginModuleRef::VERSION_STRINGS.version.as_str();
            if !api_versions_compatible(expected, &found) {
                return Err(LoadError::IncompatibleVersion {
                    path,
                    expected: format!("plugin-api {expected}"),
                    found: format!("plugin-api {found}"),
                });
            }
            let module = header
                .init_root_module::<PluginModuleRef>()
                .map_err(|e| library_error(&path, e))?;
            let plugin = ForeignPlugin::new(module).map_err(|e| LoadError::InitFailed {
                path: path.clone(),
                reason: e.message,
            })?;
            let inspection = PluginInspection {
                path,
                abi: PluginAbi::StableAbi,
                interface_version: found,
                manifest: plugin.manifest().clone(),
            };
            Ok(OpenedPlugin {
                plugin: Arc::new(plugin),
                inspection,
            })
        }
        Err(LibraryError::GetSymbolError { .. }) => {
            // No stable-ABI header: the legacy C ABI, or nothing.
            let plugin = CAbiPlugin::open(load_path).map_err(|e| e.with_path(&path))?;
            let inspection = PluginInspection {
                path,
                abi: PluginAbi::CAbi,
                interface_version: plugin.abi_version().to_string(),
                manifest: plugin.manifest().clone(),
            };
            Ok(OpenedPlugin {
                plugin: Arc::new(plugin),
                inspection,
            })
        }
        Err(e) => Err(library_error(&path, e)),
    }
}

/// Reads what the library at `path` exports: its interface, interface version, and the plugin's
/// name, version and capabilities, without registering anything.
///
/// The interface and its version are read and checked before any plugin code runs (only the
/// library's own initialisers do, as for any `dlopen`); the manifest is then read from the
/// plugin itself, which for the stable ABI means constructing it.
pub fn inspect_plugin(path: impl AsRef<Path>) -> Result<PluginInspection, LoadError> {
    open_plugin(path.as_ref()).map(|opened| opened.inspection)
}

/// `found` can be loaded by a host built with `expected`: the same major version, and for
/// `0.y` versions the same minor.
fn api_versions_compatible(expected: &str, found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(expected), parse(found)) {
        (Some((0, e_minor)), Some((0, f_minor))) => e_minor == f_minor,
        (Some((e_major, _)), Some((f_major, _))) => e_major == f_major,
        _ => false,
    }
}

fn library_error(path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path,
            reason: err.to_string(),
        },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            path,
            expected: format!("plugin-api {expected_version}"),
            found: format!("plugin-api {actual_version}"),
        },
        LibraryError::InvalidAbiHeader(header) => {
            let expected = abi_stable::library::AbiHeader::VALUE;
            LoadError::IncompatibleVersion {
                path,
                expected: format!("abi_stable ABI {}.{}", expected.abi_major, expected.abi_minor),
                found: format!("abi_stable ABI {}.{}", header.abi_major, header.abi_minor),
            }
        }
        LibraryError::AbiInstability(details) => {
            let details = details.to_string();
            LoadError::IncompatibleLayout {
                path,
                summary: layout_summary(&details),
                details,
            }
        }
        LibraryError::RootModule { err, .. } => LoadError::InitFailed {
            path,
            reason: err.to_string(),
        },
        other => LoadError::InitFailed {
            path,
            reason: other.to_string(),
        },
    }
}

/// One line out of `abi_stable`'s layout report: the first mismatching type expected and found
/// (`expected PluginModule from plugin-api 0.1.0, found OldPluginModule from ...`).
fn layout_summary(details: &str) -> String {
    let describe = |marker: &str| -> Option<String> {
        let mut lines = details.split(marker).nth(1)?.lines().map(str::trim);
        let ty = lines.find_map(|l| l.strip_prefix("type:"))?.to_owned();
        let package = lines.find_map(|l| l.strip_prefix("package:"))?;
        let package = package.replace("' version:'", " ").replace('\'', "");
        Some(format!("{ty} from {package}"))
    };
    match (describe("Layout of expected type:"), describe("Layout of found type:")) {
        (Some(expected), Some(found)) => format!("expected {expected}, found {found}"),
        _ => "the root module's layout differs".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_major_versions_need_the_same_minor() {
        assert!(api_versions_compatible("0.1.0", "0.1.7"));
        assert!(!api_versions_compatible("0.1.0", "0.2.0"));
        assert!(!api_versions_compatible("0.1.0", "0.0.1"));
        assert!(api_versions_compatible("1.2.0", "1.0.0"));
        assert!(!api_versions_compatible("1.2.0", "2.0.0"));
        assert!(!api_versions_compatible("0.1.0", "garbage"));
    }

    #[test]
    fn layout_summary_names_both_types() {
        let report = "Compared <this>:\n...\nLayout of expected type:\n    --- Type Layout ---\n    type:PluginModule\n    size:8 align:8\n    package:'plugin-api' version:'0.1.0'\n\nLayout of found type:\n    --- Type Layout ---\n    type:OldPluginModule\n    package:'old' version:'0.1.0'\n";
        assert_eq!(
            layout_summary(report),
            "expected PluginModule from plugin-api 0.1.0, found OldPluginModule from old 0.1.0"
        );
        assert_eq!(layout_summary("garbled"), "the root module's layout differs");
    }

    #[test]
    fn missing_and_non_library_files_have_their_own_errors() {
        let missing = inspect_plugin("/definitely/not/here.so").unwrap_err();
        assert!(matches!(missing, LoadError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("/definitely/not/here.so"), "{missing}");
        let dir = inspect_plugin(std::env::temp_dir()).unwrap_err();
        assert!(matches!(dir, LoadError::NotALibrary { .. }), "{dir}");
    }
}
