//! Process-wide llama.cpp backend, model loading and the facts read from the GGUF.

use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use super::{EngineConfig, EngineError, ModelFacts};

/// llama.cpp's backend may be initialized once per process; every engine shares it. It is never
/// freed (it lives as long as the process).
static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();

/// Creating contexts from a model in parallel is unsound in llama.cpp (it mutates the model):
/// every context creation in the process holds this lock.
pub(crate) static CONTEXT_CREATION: Mutex<()> = Mutex::new(());

/// The shared backend; llama.cpp's logs go to `tracing` from then on.
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Backend(e.clone()))
}

/// Decode threads when none are configured: the number of physical cores, counted as distinct
/// (`physical id`, `core id`) pairs in `/proc/cpuinfo` (Linux), capped by the CPUs this process may use
/// (`available_parallelism`, which honours affinity and cgroup quotas). Elsewhere, or if cpuinfo has no
/// core ids, half the logical CPUs (assumes 2-way SMT), at least 1.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, usize::from);
    let physical = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| count_physical_cores(&s));
    match physical {
        Some(n) => n.clamp(1, logical),
        None => (logical / 2).max(1),
    }
}

/// Distinct (`physical id`, `core id`) pairs in a `/proc/cpuinfo` text, if it lists any.
pub(crate) fn count_physical_cores(cpuinfo: &str) -> Option<usize> {
    let mut cores = std::collections::BTreeSet::new();
    let mut package = String::new();
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "processor" => package.clear(),
            "physical id" => package = value.trim().to_owned(),
            "core id" => {
                cores.insert((package.clone(), value.trim().to_owned()));
            }
            _ => {}
        }
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// Checks the configuration before anything is loaded.
pub(crate) fn check_config(config: &EngineConfig) -> Result<(), EngineError> {
    if config.slots == 0 {
        return Err(EngineError::InvalidConfig("slots must be at least 1".to_owned()));
    }
    if config.ctx_per_slot < 2 {
        return Err(EngineError::InvalidConfig("ctx_per_slot must be at least 2".to_owned()));
    }
    if config.threads == Some(0) {
        return Err(EngineError::InvalidConfig("threads must be at least 1".to_owned()));
    }
    let total = u64::from(config.ctx_per_slot) * config.slots as u64;
    if total > u64::from(u32::MAX) || i32::try_from(config.slots).is_err() {
        return Err(EngineError::InvalidConfig(format!("slots x ctx_per_slot ({total}) is too large")));
    }
    Ok(())
}

/// Checks that `path` is a readable GGUF file (by its magic bytes).
pub(crate) fn check_model_file(path: &Path) -> Result<(), EngineError> {
    if !path.is_file() {
        return Err(EngineError::ModelNotFound { path: path.to_path_buf() });
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?;
    if &magic != b"GGUF" {
        return Err(EngineError::NotGguf { path: path.to_path_buf() });
    }
    Ok(())
}

/// Loads the model's weights (offloading `gpu_layers` layers with the `cuda` feature). With RPC
/// servers, every layer goes to their devices (llama.cpp splits them by each device's free memory),
/// as `llama-server --rpc ... -ngl 99` does.
pub(crate) fn load_model(backend: &LlamaBackend, config: &EngineConfig) -> Result<LlamaModel, EngineError> {
    #[cfg(feature = "cuda")]
    let gpu_layers = config.gpu_layers;
    #[cfg(not(feature = "cuda"))]
    let gpu_layers = 0;
    let params = if config.rpc_servers.is_empty() {
        LlamaModelParams::default().with_n_gpu_layers(gpu_layers)
    } else {
        let devices = crate::rpc::add_servers(backend, &config.rpc_servers)?;
        tracing::info!(servers = ?config.rpc_servers, devices = devices.len(), "model layers on rpc servers");
        LlamaModelParams::default()
            .with_n_gpu_layers(999)
            .with_devices(&devices)
            .map_err(|e| EngineError::InvalidConfig(format!("rpc devices: {e}")))?
    };
    LlamaModel::load_from_file(backend, &config.model_path, &params).map_err(|e| EngineError::ModelLoad {
        path: config.model_path.clone(),
        message: format!("llama.cpp could not load it ({e}); see the llama.cpp log for the cause"),
    })
}

/// What the GGUF says about the model.
pub(crate) fn facts(model: &LlamaModel) -> ModelFacts {
    let meta = |key: &str| model.meta_val_str(key).ok().filter(|v| !v.is_empty());
    let arch = meta("general.architecture").unwrap_or_else(|| "unknown".to_owned());
    let description = match (meta("general.name"), meta("general.size_label")) {
        (Some(name), Some(size)) => format!("{name} ({arch}, {size})"),
        (Some(name), None) => format!("{name} ({arch})"),
        (None, _) => arch,
    };
    ModelFacts {
        n_ctx_train: model.n_ctx_train(),
        n_params: model.n_params(),
        size_bytes: model.size(),
        description,
        has_chat_template: model.meta_val_str("tokenizer.chat_template").is_ok()
            || model.chat_template(None).is_ok(),
        n_vocab: model.n_vocab(),
    }
}

#[cfg(test)]
mod tests {
    use super::count_physical_cores;

    #[test]
    fn counts_cores_not_hyperthreads() {
        let smt = "processor\t: 0\nphysical id\t: 0\ncore id\t\t: 0\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                   processor\t: 2\nphysical id\t: 0\ncore id\t\t: 1\n\nprocessor\t: 3\nphysical id\t: 0\ncore id\t\t: 1\n";
        assert_eq!(count_physical_cores(smt), Some(2));
        let two_sockets =
            "processor: 0\nphysical id: 0\ncore id: 0\nprocessor: 1\nphysical id: 1\ncore id: 0\n";
        assert_eq!(count_physical_cores(two_sockets), Some(2));
        assert_eq!(count_physical_cores("processor: 0\nmodel name: x\n"), None);
    }
}
