//! The device listing: CPU, RAM and accelerators with their free memory, read fresh for each request.

use rbee_bus::{DeviceList, SCHEMA_VERSION};

use crate::Hive;

/// The device listing (reads the devices: call it off the async threads).
pub fn list(hive: &Hive) -> DeviceList {
    let snap = hive.inventory_snapshot();
    DeviceList { v: SCHEMA_VERSION, cpu: snap.cpu, ram: snap.ram, devices: snap.devices }
}
