//! What the machine has: GPUs through NVML, the CPU, and RAM. Without NVIDIA libraries the hive reports
//! the CPU only, says so once in its log, and never panics.

use nvml_wrapper::Nvml;
use rbee_bus::{CpuInfo, DeviceInfo, DeviceKind, MemoryInfo};
use sysinfo::System;

/// Reads the machine's devices; keeps NVML and sysinfo handles between reads.
pub struct Inventory {
    nvml: Option<Nvml>,
    system: System,
    cpu: CpuInfo,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory").field("nvml", &self.nvml.is_some()).field("cpu", &self.cpu).finish()
    }
}

/// One reading of the machine.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The CPU.
    pub cpu: CpuInfo,
    /// System memory.
    pub ram: MemoryInfo,
    /// `cpu` first, then each GPU.
    pub devices: Vec<DeviceInfo>,
}

impl Inventory {
    /// Probes the machine once. NVML failing to load is the normal case on CPU-only machines.
    pub fn detect() -> Self {
        let nvml = match Nvml::init() {
            Ok(nvml) => {
                tracing::info!(gpus = nvml.device_count().unwrap_or(0), "nvml loaded");
                Some(nvml)
            }
            Err(e) => {
                tracing::info!(reason = %e, "no nvidia gpu support (nvml unavailable), reporting cpu only");
                None
            }
        };
        let mut system = System::new();
        system.refresh_cpu_all();
        system.refresh_memory();
        let logical = system.cpus().len() as u32;
        let cpu = CpuInfo {
            model: system.cpus().first().map(|c| c.brand().trim().to_owned()).unwrap_or_default(),
            physical_cores: System::physical_core_count().map(|n| n as u32).unwrap_or(logical),
            logical_cores: logical,
        };
        Self { nvml, system, cpu }
    }

    /// Reads free memory and utilization now.
    pub fn read(&mut self) -> Snapshot {
        self.system.refresh_memory();
        let ram = MemoryInfo {
            total_bytes: self.system.total_memory(),
            available_bytes: self.system.available_memory(),
        };
        let mut devices = vec![DeviceInfo {
            id: "cpu".to_owned(),
            kind: DeviceKind::Cpu,
            index: 0,
            name: if self.cpu.model.is_empty() { "cpu".to_owned() } else { self.cpu.model.clone() },
            uuid: None,
            total_bytes: ram.total_bytes,
            free_bytes: ram.available_bytes,
            utilization_percent: None,
            compute_capability: None,
        }];
        if let Some(nvml) = &self.nvml {
            devices.extend(read_gpus(nvml));
        }
        Snapshot { cpu: self.cpu.clone(), ram, devices }
    }
}

fn read_gpus(nvml: &Nvml) -> Vec<DeviceInfo> {
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot count gpus");
            return Vec::new();
        }
    };
    (0..count)
        .filter_map(|index| {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| tracing::warn!(index, error = %e, "cannot open gpu"))
                .ok()?;
            let memory = device.memory_info().ok()?;
            Some(DeviceInfo {
                id: format!("cuda:{index}"),
                kind: DeviceKind::Cuda,
                index,
                name: device.name().unwrap_or_else(|_| "nvidia gpu".to_owned()),
                uuid: device.uuid().ok(),
                total_bytes: memory.total,
                free_bytes: memory.free,
                utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
                compute_capability: device
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_at_least_the_cpu_without_panicking() {
        let mut inv = Inventory::detect();
        let snap = inv.read();
        assert_eq!(snap.devices[0].id, "cpu");
        assert!(snap.ram.total_bytes > 0);
        assert!(snap.ram.available_bytes <= snap.ram.total_bytes);
        assert!(snap.cpu.logical_cores >= 1);
    }
}
