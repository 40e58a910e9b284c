//! Kernel memory of our maps: the kernel's own figure (`memlock` in the
//! map fd's fdinfo, i.e. the map's `map_mem_usage`), split into what grows
//! with the CPU count and what does not, so that 64 and 128 CPUs can be
//! computed on a machine that has fewer.

use std::os::fd::AsRawFd as _;

use anyhow::Result;
use observer_common::{DEFAULT_FLOW_CAPACITY, FLOW_INDEX_MAP, FREE_RING_MAP, SLOTS_MAP};
use serde::Serialize;

use super::procfs;
use crate::datapath::Datapath;

const BPF_MAP_TYPE_PERCPU_ARRAY: u64 = 6;

#[derive(Serialize)]
pub struct MapMemory {
    pub name: String,
    pub map_type: u64,
    pub max_entries: u64,
    pub key_size: u64,
    pub value_size: u64,
    /// The kernel's figure on this machine.
    pub memlock: u64,
    /// The part of `memlock` that is per possible CPU.
    pub per_cpu_bytes: u64,
    pub memlock_64cpu: u64,
    pub memlock_128cpu: u64,
}

#[derive(Serialize)]
pub struct MemoryResult {
    pub flow_capacity: u32,
    pub possible_cpus: u32,
    pub maps: Vec<MapMemory>,
    pub total_bytes: u64,
    pub total_64cpu: u64,
    pub total_128cpu: u64,
    /// The flow maps' memlock per slot (slots, free ring and index; shared
    /// by all CPUs).
    pub flow_map_bytes_per_slot: f64,
    /// All maps per flow slot, here and on 64 / 128 CPUs.
    pub bytes_per_slot: f64,
    pub bytes_per_slot_64cpu: f64,
    pub bytes_per_slot_128cpu: f64,
    pub map_mib: f64,
    pub map_mib_64cpu: f64,
    pub map_mib_128cpu: f64,
}

pub fn run() -> Result<MemoryResult> {
    let capacity = DEFAULT_FLOW_CAPACITY;
    let dp = Datapath::load(capacity)?;
    let cpus = procfs::possible_cpus() as u64;
    let mut maps = Vec::new();
    for (name, fd) in dp.map_fds() {
        let info = procfs::fdinfo("self", fd.as_raw_fd())?;
        let n = |k| procfs::num(&info, k);
        let map_type = n("map_type");
        let per_cpu_bytes = match map_type {
            // array_map_mem_usage: entries * round_up(value_size, 8) per CPU.
            BPF_MAP_TYPE_PERCPU_ARRAY => n("max_entries") * n("value_size").next_multiple_of(8),
            _ => 0,
        };
        let memlock = n("memlock");
        let at = |c: u64| (memlock + per_cpu_bytes * c).saturating_sub(per_cpu_bytes * cpus);
        maps.push(MapMemory {
            name,
            map_type,
            max_entries: n("max_entries"),
            key_size: n("key_size"),
            value_size: n("value_size"),
            memlock,
            per_cpu_bytes,
            memlock_64cpu: at(64),
            memlock_128cpu: at(128),
        });
    }
    let sum = |f: fn(&MapMemory) -> u64| maps.iter().map(f).sum::<u64>();
    let (total, t64, t128) = (
        sum(|m| m.memlock),
        sum(|m| m.memlock_64cpu),
        sum(|m| m.memlock_128cpu),
    );
    let flow: u64 = maps
        .iter()
        .filter(|m| [SLOTS_MAP, FREE_RING_MAP, FLOW_INDEX_MAP].contains(&m.name.as_str()))
        .map(|m| m.memlock)
        .sum();
    let slots = capacity as f64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(MemoryResult {
        flow_capacity: capacity,
        possible_cpus: cpus as u32,
        flow_map_bytes_per_slot: flow as f64 / slots,
        bytes_per_slot: total as f64 / slots,
        bytes_per_slot_64cpu: t64 as f64 / slots,
        bytes_per_slot_128cpu: t128 as f64 / slots,
        map_mib: mib(total),
        map_mib_64cpu: mib(t64),
        map_mib_128cpu: mib(t128),
        total_bytes: total,
        total_64cpu: t64,
        total_128cpu: t128,
        maps,
    })
}
