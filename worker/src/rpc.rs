//! llama.cpp's RPC backend, for a model split across hosts (issue 20): serving this host's memory to
//! a worker elsewhere ([`serve`], what `rbee-rpc-server` runs), and giving a worker the devices of
//! RPC servers elsewhere ([`add_servers`]). The backend is compiled in with `GGML_RPC=ON`
//! (`.cargo/config.toml`); `llama-cpp-2` has no binding for it, so it is reached through ggml's
//! backend registry and its proc-address lookup. This is the workspace's one module with `unsafe`:
//! each call says why it is sound.
//!
//! The RPC protocol has no authentication: a server must listen only where the cluster can reach it
//! (the hive binds it to its cluster address).

#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr, CString};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

/// Why the RPC backend could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The build has no RPC backend.
    #[error("this build of llama.cpp has no RPC backend (build with GGML_RPC=ON)")]
    Missing,
    /// An endpoint is not `HOST:PORT`.
    #[error("rpc endpoint {0:?} is not HOST:PORT")]
    BadEndpoint(String),
    /// More servers than ggml takes.
    #[error("at most {max} rpc servers, {given} given")]
    TooMany {
        /// The limit.
        max: usize,
        /// How many.
        given: usize,
    },
    /// A server was unreachable or answered no device.
    #[error("rpc server {0} gave no device (is it running and reachable?)")]
    NoDevice(String),
}

/// The most RPC servers one worker uses (`GGML_RPC_MAX_SERVERS`).
pub const MAX_SERVERS: usize = 16;

/// `void ggml_backend_rpc_start_server(endpoint, cache_dir, n_threads, n_devices, devices)`.
type StartServer =
    unsafe extern "C" fn(*const c_char, *const c_char, usize, usize, *mut sys::ggml_backend_dev_t);
/// `ggml_backend_reg_t ggml_backend_rpc_add_server(endpoint)`.
type AddServer = unsafe extern "C" fn(*const c_char) -> sys::ggml_backend_reg_t;

/// The address of one of the RPC backend's functions, `None` when the build has no RPC backend.
fn proc_address(_backend: &LlamaBackend, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: the backend registry is initialized (a `LlamaBackend` exists); the name is a
    // NUL-terminated literal; the registry returns null for a backend not compiled in.
    let reg = unsafe { sys::ggml_backend_reg_by_name(c"RPC".as_ptr()) };
    if reg.is_null() {
        return None;
    }
    // SAFETY: `reg` is a live registry entry (entries are never freed); `name` is NUL-terminated;
    // the lookup returns null for a name it does not know.
    let address = unsafe { sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr()) };
    (!address.is_null()).then_some(address)
}

/// True when this build has llama.cpp's RPC backend.
pub fn available(backend: &LlamaBackend) -> bool {
    proc_address(backend, c"ggml_backend_rpc_start_server").is_some()
}

fn endpoint(value: &str) -> Result<CString, RpcError> {
    let bad = || RpcError::BadEndpoint(value.to_owned());
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    CString::new(value).map_err(|_| bad())
}

/// Serves this host's CPU memory and compute on `endpoint` (`HOST:PORT`) with `threads` threads,
/// until the process ends: it returns only when the server could not start.
pub fn serve(backend: &LlamaBackend, at: &str, threads: usize) -> Result<(), RpcError> {
    let endpoint = endpoint(at)?;
    let start = proc_address(backend, c"ggml_backend_rpc_start_server").ok_or(RpcError::Missing)?;
    // SAFETY: the registry returned this address for `ggml_backend_rpc_start_server`, whose C
    // signature `StartServer` spells out (ggml-rpc.h of the vendored llama.cpp).
    let start: StartServer = unsafe { std::mem::transmute::<*mut c_void, StartServer>(start) };
    // SAFETY: the registry is initialized; the CPU backend is always compiled in.
    let mut cpu = unsafe { sys::ggml_backend_dev_by_type(sys::GGML_BACKEND_DEVICE_TYPE_CPU) };
    if cpu.is_null() {
        return Err(RpcError::Missing);
    }
    tracing::info!(endpoint = at, threads, "rpc server listening");
    // SAFETY: `endpoint` is NUL-terminated and outlives the call; a null cache dir means none;
    // `cpu` is one live device, passed as an array of one. The call blocks while it serves.
    unsafe { start(endpoint.as_ptr(), std::ptr::null(), threads.max(1), 1, &mut cpu) };
    Err(RpcError::NoDevice(at.to_owned()))
}

/// Adds the devices of the RPC servers at `endpoints` to ggml's registry; returns their device
/// indices, in the order given, for the model's parameters.
pub fn add_servers(backend: &LlamaBackend, endpoints: &[String]) -> Result<Vec<usize>, RpcError> {
    if endpoints.len() > MAX_SERVERS {
        return Err(RpcError::TooMany { max: MAX_SERVERS, given: endpoints.len() });
    }
    let add = proc_address(backend, c"ggml_backend_rpc_add_server").ok_or(RpcError::Missing)?;
    // SAFETY: the registry returned this address for `ggml_backend_rpc_add_server`, whose C
    // signature `AddServer` spells out.
    let add: AddServer = unsafe { std::mem::transmute::<*mut c_void, AddServer>(add) };
    let mut indices = Vec::new();
    for (i, at) in endpoints.iter().enumerate() {
        let endpoint = endpoint(at)?;
        if endpoints[..i].contains(at) {
            return Err(RpcError::BadEndpoint(format!("{at} (given twice)")));
        }
        // llama.cpp aborts the process on a server it cannot reach: check it answers first.
        if !reachable(at) {
            return Err(RpcError::NoDevice(at.clone()));
        }
        // SAFETY: the registry is initialized.
        let before = unsafe { sys::ggml_backend_dev_count() };
        // SAFETY: `endpoint` is NUL-terminated and outlives the call; it connects to the server and
        // returns a registry entry for its devices (null on failure).
        let reg = unsafe { add(endpoint.as_ptr()) };
        if reg.is_null() {
            return Err(RpcError::NoDevice(at.clone()));
        }
        // SAFETY: `reg` is the live entry just returned; registering it makes its devices visible
        // to llama.cpp's model loader (entries live as long as the process).
        unsafe { sys::ggml_backend_register(reg) };
        // SAFETY: the registry is initialized.
        let after = unsafe { sys::ggml_backend_dev_count() };
        if after <= before {
            return Err(RpcError::NoDevice(at.clone()));
        }
        indices.extend(before..after);
    }
    Ok(indices)
}

/// True when a TCP connection to `at` opens within [`CONNECT_TIMEOUT`].
fn reachable(at: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addresses) = at.to_socket_addrs() else { return false };
    addresses
        .into_iter()
        .any(|address| std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).is_ok())
}

/// How long [`add_servers`] waits for a server to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port() {
        assert!(endpoint("127.0.0.1:50052").is_ok());
        assert!(endpoint("[::1]:50052").is_ok());
        for bad in ["127.0.0.1", ":50052", "host:0", "host:99999", "ho\0st:1"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
