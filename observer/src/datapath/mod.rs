//! The kernel side seen from userspace: load the object, attach it to
//! interfaces, follow interfaces, and read (drain) its maps.

pub mod attach;
pub mod clock;
pub mod cpu;
mod index;
pub mod kernel_log;
pub mod links;
pub mod object;
pub mod pin;
pub mod slots;
pub mod sys;
pub mod testrun;
pub mod tracker;

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, TestRun as _,
    maps::{Array, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{RawTracePoint, RawTracePointRunOptions},
};
use kernel_log::KernelLogLevel;
use observer_common::{
    CLOCK_MAP, ClockSample, ENCAP_TOTALS_MAP, Encap, EncapTotals, FLOW_CACHE_MAP, FLOW_INDEX_MAP,
    FLUSHED_ENCAP_TOTALS_MAP, FLUSHED_IFACE_TOTALS_MAP, FREE_RING_MAP, FlowKey, FlowStats,
    IFACE_SLOTS, IFACE_TOTALS_MAP, IfaceTotals, MTU_LIMITS_MAP, MtuLimit, RING_HEAD_MAP, SLOTS_MAP,
    STATS_MAP, Stat, StopAfter,
};

use self::{
    slots::{SlotFds, Slots},
    tracker::{SlotChange, Tracker},
};

/// The loaded programs and their maps.
pub struct Datapath {
    /// The maps were pinned by an earlier daemon and hold its counts.
    pub reused_maps: bool,
    /// The kernel's id of the flow slots' map: tells whether a saved state
    /// describes these very maps.
    pub flows_map_id: u32,
    /// The pinned maps' layout (see [`pin::layout_id`]), when pinned.
    pub layout: Option<String>,
    pub ebpf: Ebpf,
    /// The flows' counters and index, mapped into our memory.
    slots: Slots,
    /// What the polls know of each slot.
    pub tracker: Tracker,
    slot_maps: [MapData; 5],
    iface_totals: PerCpuArray<MapData, IfaceTotals>,
    encap_totals: PerCpuArray<MapData, EncapTotals>,
    /// What the flush program added to the totals (see `FLUSHED_IFACE`).
    flushed_iface: Array<MapData, IfaceTotals>,
    flushed_encap: Array<MapData, EncapTotals>,
    stats: PerCpuArray<MapData, u64>,
    clock: Array<MapData, ClockSample>,
    mtu_limits: Array<MapData, MtuLimit>,
    pub capacity: u32,
}

impl Datapath {
    /// Loads the programs with maps of their own and their log off (replay,
    /// benchmarks).
    pub fn load(capacity: u32) -> Result<Self> {
        Self::load_with(capacity, None, KernelLogLevel::Off)
    }

    /// Loads the programs as [`Datapath::load`] does, and the benchmark's
    /// entry points that stop after `part` (see
    /// [`object::stopping_after`]): what each part costs.
    pub fn load_stopping_after(capacity: u32, part: StopAfter) -> Result<Self> {
        let mut dp = Self::load(capacity)?;
        object::load_parts(&mut dp.ebpf, part)?;
        Ok(dp)
    }

    /// Loads the programs, with the maps pinned under `pins` when given
    /// (reused when an earlier daemon of the same map layout left them
    /// there), writing kernel log records up to `log`.
    pub fn load_with(
        capacity: u32,
        pins: Option<&pin::PinRoot>,
        log: KernelLogLevel,
    ) -> Result<Self> {
        let Some(pins) = pins else {
            return Self::load_in(capacity, None, log);
        };
        let layout = pin::layout_id(object::OBJECT, capacity)?;
        let dir = pins.maps_dir(&layout);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the pin directory {}", dir.display()))?;
        let mut dp = Self::load_in(capacity, Some(&dir), log)?;
        dp.layout = Some(layout);
        Ok(dp)
    }

    fn load_in(
        capacity: u32,
        maps_dir: Option<&std::path::Path>,
        log: KernelLogLevel,
    ) -> Result<Self> {
        let reused_maps = maps_dir.is_some_and(|d| d.join(SLOTS_MAP).exists());
        let mut ebpf = object::load(capacity, maps_dir, log)?;
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        let mut data = |name: &str| -> Result<MapData> {
            match take(name)? {
                Map::Array(m) | Map::PerCpuArray(m) | Map::Unsupported(m) => Ok(m),
                _ => Err(anyhow!("map {name} is not an array")),
            }
        };
        let slot_maps = [
            data(SLOTS_MAP)?,
            data(FREE_RING_MAP)?,
            data(RING_HEAD_MAP)?,
            data(FLOW_INDEX_MAP)?,
            data(FLOW_CACHE_MAP)?,
        ];
        let flows_map_id = slot_maps[0].info().map(|i| i.id()).unwrap_or(0);
        let fds = SlotFds {
            slots: slot_maps[0].fd().as_fd(),
            ring: slot_maps[1].fd().as_fd(),
            head: slot_maps[2].fd().as_fd(),
            index: slot_maps[3].fd().as_fd(),
        };
        let slots = Slots::map(fds, capacity).context("mapping the flow slots")?;
        let iface_totals = PerCpuArray::try_from(take(IFACE_TOTALS_MAP)?)?;
        let encap_totals = PerCpuArray::try_from(take(ENCAP_TOTALS_MAP)?)?;
        let flushed_iface = Array::try_from(take(FLUSHED_IFACE_TOTALS_MAP)?)?;
        let flushed_encap = Array::try_from(take(FLUSHED_ENCAP_TOTALS_MAP)?)?;
        let stats = PerCpuArray::try_from(take(STATS_MAP)?)?;
        let clock = Array::try_from(take(CLOCK_MAP)?)?;
        let mtu_limits = Array::try_from(take(MTU_LIMITS_MAP)?)?;
        Ok(Self {
            reused_maps,
            flows_map_id,
            layout: None,
            mtu_limits,
            clock,
            ebpf,
            slots,
            tracker: Tracker::new(),
            slot_maps,
            iface_totals,
            encap_totals,
            flushed_iface,
            flushed_encap,
            stats,
            capacity,
        })
    }

    /// Each kernel map by name, for its memory (`memlock` in fdinfo): ours,
    /// and those still in the object (the log ring while no reader took it,
    /// the last unparsed reason, read-only data).
    pub fn map_fds(&self) -> Vec<(String, BorrowedFd<'_>)> {
        let mut fds: Vec<(String, BorrowedFd<'_>)> = [
            (SLOTS_MAP, self.slot_maps[0].fd().as_fd()),
            (FREE_RING_MAP, self.slot_maps[1].fd().as_fd()),
            (RING_HEAD_MAP, self.slot_maps[2].fd().as_fd()),
            (FLOW_INDEX_MAP, self.slot_maps[3].fd().as_fd()),
            (FLOW_CACHE_MAP, self.slot_maps[4].fd().as_fd()),
            (IFACE_TOTALS_MAP, self.iface_totals.map().fd().as_fd()),
            (ENCAP_TOTALS_MAP, self.encap_totals.map().fd().as_fd()),
            (
                FLUSHED_IFACE_TOTALS_MAP,
                self.flushed_iface.map().fd().as_fd(),
            ),
            (
                FLUSHED_ENCAP_TOTALS_MAP,
                self.flushed_encap.map().fd().as_fd(),
            ),
            (STATS_MAP, self.stats.map().fd().as_fd()),
            (CLOCK_MAP, self.clock.map().fd().as_fd()),
            (MTU_LIMITS_MAP, self.mtu_limits.map().fd().as_fd()),
        ]
        .into_iter()
        .map(|(name, fd)| (name.to_owned(), fd))
        .collect();
        for (name, map) in self.ebpf.maps() {
            let data = match map {
                Map::RingBuf(m) | Map::Array(m) | Map::PerCpuArray(m) => m,
                _ => continue,
            };
            fds.push((name.to_owned(), data.fd().as_fd()));
        }
        fds
    }

    /// Sets the largest IP packet (per family, 0: none) that traffic entering
    /// at `ifindex` fits through; packets over it are counted per flow.
    pub fn set_mtu_limit(&mut self, ifindex: u32, ipv4: u16, ipv6: u16) -> Result<()> {
        let limit = MtuLimit {
            ifindex,
            ipv4,
            ipv6,
        };
        self.mtu_limits
            .set(ifindex % IFACE_SLOTS, limit, 0)
            .context("setting an MTU limit")
    }

    /// The kernel's ids of our loaded programs.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    /// (run time ns, runs) of each loaded program, by name, from the
    /// kernel's fdinfo; empty unless `kernel.bpf_stats_enabled` is 1.
    pub fn program_stats(&self) -> Vec<(String, (u64, u64))> {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() == "1");
        if !enabled {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (name, program) in self.ebpf.programs() {
            let Ok(fd) = program.fd() else { continue };
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            let Ok(info) = std::fs::read_to_string(path) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.push((name.to_owned(), (field("run_time_ns:"), field("run_cnt:"))));
        }
        out
    }

    /// Moves the counts waiting in every online CPU's flow cache into the
    /// flows' slots (see `FlowCacheEntry`): the flush program run on each
    /// CPU in turn. True when no entry was left: one is left while a
    /// classifier counts in it, at the instant the flush interrupts it, so
    /// each CPU gets a few more runs first. (An offline CPU's entries wait
    /// until it is online again; no program runs there meanwhile.)
    pub fn flush_pending(&self) -> Result<bool> {
        const RUNS: usize = 16;
        let program: &RawTracePoint = self
            .ebpf
            .program(object::FLUSH_PENDING)
            .context("the flush program is missing")?
            .try_into()?;
        let cpus = aya::util::online_cpus().map_err(|(path, e)| anyhow!("reading {path}: {e}"))?;
        let mut clean = true;
        for cpu in cpus {
            let mut left = 0;
            for _ in 0..RUNS {
                let mut opts = RawTracePointRunOptions::new();
                opts.cpu = Some(cpu);
                left = program
                    .test_run(opts)
                    .with_context(|| format!("flushing CPU {cpu}'s flow cache"))?
                    .return_value;
                if left == 0 {
                    break;
                }
            }
            clean &= left == 0;
        }
        Ok(clean)
    }

    /// Every flow in the kernel now, read from its slot (after a flush).
    pub fn read_flows(&self, mut each: impl FnMut(&FlowKey, &FlowStats)) -> Result<()> {
        self.flush_pending()?;
        for i in 0..self
            .slots
            .in_use_bound()
            .context("mapping the flow slots")?
        {
            if self.slots.generation(i) & 1 == 1 {
                each(&self.slots.key(i), &self.slots.stats(i));
            }
        }
        Ok(())
    }

    /// Removes a flow from the kernel maps at once, returning its final
    /// counters. Only while no program runs (replay, tests: frames run one
    /// at a time on the caller's thread); the daemon gives slots back in
    /// two steps (see [`Datapath::retire`]).
    pub fn evict(&self, key: &FlowKey) -> Result<Option<FlowStats>> {
        self.slots
            .in_use_bound()
            .context("mapping the flow slots")?;
        let Some(slot) = self.slots.find(key) else {
            return Ok(None);
        };
        self.slots.unindex(slot);
        self.slots.end_generation(slot);
        // The flow's pending counts into the slot, and the CPUs' entries of
        // it emptied: its next packet opens a new slot.
        if !self.flush_pending()? {
            bail!("a flush left entries: evict only while no program runs");
        }
        let stats = self.slots.stats(slot);
        self.slots.give_back(slot);
        Ok(Some(stats))
    }

    /// One poll of the slots: every change since the last (see
    /// [`Tracker::poll`]).
    pub fn poll_flows(&mut self, each: impl FnMut(SlotChange)) -> Result<()> {
        let flushed = self.flush_pending()?;
        self.tracker
            .poll(&self.slots, flushed, each)
            .context("mapping the flow slots")
    }

    /// Takes every count now in the slots as read (see [`Tracker::adopt`]).
    pub fn adopt_slots(&mut self) -> Result<()> {
        self.flush_pending()?;
        self.tracker = Tracker::adopt(&self.slots).context("mapping the flow slots")?;
        Ok(())
    }

    /// Flows in the kernel's slots (as of the last poll).
    pub fn live_flows(&self) -> usize {
        self.tracker.live()
    }

    /// Step one of giving slots back: the index finds them no more (entries
    /// removed, generations ended), and the next flush empties the CPUs'
    /// cache entries of them; the next poll, after a flush that left
    /// nothing, reads their final counts and frees them. Between the two
    /// steps a packet of the flow counts in its old slot (through a CPU's
    /// cache) or opens a new one, and both slots count. (A lookup checks a
    /// slot's key and odd generation, so even an index entry left behind
    /// could not count a packet in a slot given back.)
    pub fn retire(&mut self, which: &[u32]) {
        self.tracker.retire(&self.slots, which);
    }

    /// Datapath counters summed over CPUs, indexed by [`Stat`].
    pub fn stats(&self) -> Result<[u64; Stat::COUNT as usize]> {
        let mut out = [0u64; Stat::COUNT as usize];
        for stat in Stat::ALL {
            out[stat as usize] = self.stats.get(&(stat as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Per-encapsulation totals (from outer headers) summed over CPUs, with
    /// what the flush program added.
    pub fn encap_totals(&self) -> Result<[EncapTotals; Encap::COUNT as usize]> {
        let mut out = [EncapTotals::default(); Encap::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let flushed = self.flushed_encap.get(&(i as u32), 0)?;
            for v in self
                .encap_totals
                .get(&(i as u32), 0)?
                .iter()
                .chain([&flushed])
            {
                slot.packets += v.packets;
                slot.bytes += v.bytes;
                slot.overhead_bytes += v.overhead_bytes;
            }
        }
        Ok(out)
    }

    /// Makes an interface's totals slot its own before we attach to it: a
    /// slot last written for another interface (one gone, whose ifindex
    /// was equal modulo [`IFACE_SLOTS`]) is zeroed; one that already counts
    /// for this interface (a daemon before us attached) is left alone.
    pub fn claim_iface_totals(&mut self, ifindex: u32) -> Result<()> {
        let slot = ifindex % IFACE_SLOTS;
        let fresh = IfaceTotals {
            ifindex,
            ..Default::default()
        };
        if self.flushed_iface.get(&slot, 0)?.ifindex != ifindex {
            self.flushed_iface
                .set(slot, fresh, 0)
                .context("zeroing an interface's flushed totals")?;
        }
        let values = self.iface_totals.get(&slot, 0)?;
        if values.iter().any(|v| v.ifindex == ifindex) {
            return Ok(());
        }
        let cpus = values.iter().count();
        self.iface_totals
            .set(slot, PerCpuValues::try_from(vec![fresh; cpus])?, 0)
            .context("zeroing an interface's totals")
    }

    /// Totals of one interface summed over CPUs, with what the flush
    /// program added. A slot counts only if it was last written for this
    /// ifindex (see `IFACE_SLOTS`).
    pub fn iface_totals(&self, ifindex: u32) -> Result<IfaceTotals> {
        let mut sum = IfaceTotals {
            ifindex,
            ..Default::default()
        };
        let slot = ifindex % IFACE_SLOTS;
        let flushed = self.flushed_iface.get(&slot, 0)?;
        for v in self.iface_totals.get(&slot, 0)?.iter().chain([&flushed]) {
            if v.ifindex != ifindex {
                continue;
            }
            for h in 0..2 {
                sum.hook[h].packets += v.hook[h].packets;
                sum.hook[h].bytes += v.hook[h].bytes;
                sum.overflow[h].packets += v.overflow[h].packets;
                sum.overflow[h].bytes += v.overflow[h].bytes;
            }
            sum.non_ip_packets += v.non_ip_packets;
        }
        Ok(sum)
    }
}
