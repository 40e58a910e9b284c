//! The flows' counters as userspace sees them: the kernel's `SLOTS`,
//! `FREE_RING`, `RING_HEAD` and `FLOW_INDEX` arrays mapped into our memory,
//! read in place (a poll copies nothing it does not need), and the two
//! steps that give a slot back (see `FlowSlot` in observer-common for the
//! protocol).

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    ptr::NonNull,
    sync::{
        OnceLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use observer_common::{FlowKey, FlowSlot, FlowStats, RingHead, SLOT_IN_RING};

use super::index::FlowIndex;

/// A shared mapping of a `BPF_F_MMAPABLE` array of `T` (elements are
/// 8-byte aligned in such arrays, as ours are).
pub(super) struct Mmap<T> {
    ptr: NonNull<T>,
    len: usize,
    bytes: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; every access
// goes through raw pointers with the atomics or volatile reads it needs.
unsafe impl<T> Send for Mmap<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Mmap<T> {}

impl<T> Mmap<T> {
    /// Elements `first..first + len`; `first` must start a page.
    pub(super) fn new(fd: BorrowedFd<'_>, first: usize, len: usize) -> io::Result<Self> {
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let offset = first * size_of::<T>();
        assert!(
            offset.is_multiple_of(page),
            "element {first} does not start a page"
        );
        let bytes = (len * size_of::<T>()).next_multiple_of(page);
        // SAFETY: a new shared mapping of the map's data; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(p.cast()).ok_or_else(io::Error::last_os_error)?,
            len,
            bytes,
        })
    }

    pub(super) fn at(&self, i: usize) -> *mut T {
        assert!(i < self.len, "index {i} beyond {}", self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.ptr.as_ptr().add(i) }
    }
}

impl<T> Drop for Mmap<T> {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.bytes) };
    }
}

/// Memory standing in for a mmapable map in tests: `bytes` of a memfd.
#[cfg(test)]
pub(super) fn memfd(bytes: usize) -> OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain syscalls; the descriptor is checked and owned.
    unsafe {
        let fd = libc::memfd_create(c"slots".as_ptr(), 0);
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        assert_eq!(libc::ftruncate(fd, bytes as libc::off_t), 0);
        OwnedFd::from_raw_fd(fd)
    }
}

/// Slots mapped a chunk at a time, as the kernel first hands them out: the
/// kernel maps all of an mmapable array's pages at once, and they count in
/// our resident memory, so a map of 262,144 slots holding 10,000 flows
/// maps 2 chunks, not 32 MiB.
struct ChunkedSlots {
    fd: OwnedFd,
    chunks: Vec<OnceLock<Mmap<FlowSlot>>>,
    capacity: usize,
}

impl ChunkedSlots {
    /// Slots per chunk: 512 KiB, a whole number of pages.
    const CHUNK: usize = 4096;

    fn new(fd: BorrowedFd<'_>, capacity: u32) -> io::Result<Self> {
        let capacity = capacity as usize;
        Ok(Self {
            fd: fd.try_clone_to_owned()?,
            chunks: (0..capacity.div_ceil(Self::CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
            capacity,
        })
    }

    /// Maps the chunks that hold slots `0..n`.
    fn map_below(&self, n: usize) -> io::Result<()> {
        for (c, chunk) in self.chunks.iter().enumerate().take(n.div_ceil(Self::CHUNK)) {
            if chunk.get().is_none() {
                let first = c * Self::CHUNK;
                let len = Self::CHUNK.min(self.capacity - first);
                let _ = chunk.set(Mmap::new(self.fd.as_fd(), first, len)?);
            }
        }
        Ok(())
    }

    fn at(&self, i: usize) -> *mut FlowSlot {
        let chunk = self.chunks[i / Self::CHUNK]
            .get()
            .unwrap_or_else(|| panic!("slot {i} read before its chunk was mapped"));
        chunk.at(i % Self::CHUNK)
    }
}

/// The kernel's arrays of one flow map, in the order [`Slots::map`] takes
/// them.
pub struct SlotFds<'a> {
    pub slots: BorrowedFd<'a>,
    pub ring: BorrowedFd<'a>,
    pub head: BorrowedFd<'a>,
    pub index: BorrowedFd<'a>,
}

/// The mapped slot arrays of one flow map.
pub struct Slots {
    slots: ChunkedSlots,
    ring: Mmap<u64>,
    head: Mmap<RingHead>,
    index: FlowIndex,
    capacity: u32,
}

impl Slots {
    pub fn map(fds: SlotFds<'_>, capacity: u32) -> io::Result<Self> {
        let n = capacity as usize;
        let s = Self {
            slots: ChunkedSlots::new(fds.slots, capacity)?,
            ring: Mmap::new(fds.ring, 0, n)?,
            head: Mmap::new(fds.head, 0, 1)?,
            index: FlowIndex::map(fds.index, capacity)?,
            capacity,
        };
        s.init_if_new()?;
        Ok(s)
    }

    /// The ring head's u64 field at `offset` (see [`RingHead`]).
    fn head_u64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: an aligned u64 of the mapping (the offset is a field's),
        // shared with the kernel.
        unsafe { AtomicU64::from_ptr(self.head.at(0).byte_add(offset).cast()) }
    }

    fn cons(&self) -> &AtomicU64 {
        self.head_u64(offset_of!(RingHead, cons))
    }

    fn prod(&self) -> &AtomicU64 {
        self.head_u64(offset_of!(RingHead, prod))
    }

    /// Slots below this one have been handed out at least once.
    fn fresh(&self) -> u64 {
        self.head_u64(offset_of!(RingHead, fresh))
            .load(Ordering::Acquire)
    }

    fn seed(&self) -> u64 {
        self.head_u64(offset_of!(RingHead, seed))
            .load(Ordering::Acquire)
    }

    /// A new map: the index's seed and size, then the capacity, which tells
    /// the programs that both are set. (Maps pinned by an earlier daemon
    /// have them already and keep their state.) Nothing else is written:
    /// the kernel hands slots out in order the first time round (see
    /// `RingHead`), and those never handed out lie beyond
    /// [`Slots::in_use_bound`], where no poll looks, so their pages stay
    /// out of our memory until the kernel uses them.
    fn init_if_new(&self) -> io::Result<()> {
        let cap = self.head_u64(offset_of!(RingHead, capacity));
        if cap.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let mut seed = [0u8; 8];
        // SAFETY: writes at most 8 bytes into `seed`.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if got != seed.len() as isize {
            return Err(io::Error::last_os_error());
        }
        self.head_u64(offset_of!(RingHead, seed))
            .store(u64::from_ne_bytes(seed), Ordering::Release);
        self.head_u64(offset_of!(RingHead, index_mask))
            .store(self.index.mask() as u64, Ordering::Release);
        cap.store(self.capacity as u64, Ordering::Release);
        Ok(())
    }

    /// Slots below this index have been handed out at least once: a poll
    /// reads no more. Maps them if they are not yet.
    pub fn in_use_bound(&self) -> io::Result<u32> {
        let bound = self.fresh().min(self.capacity as u64) as u32;
        self.slots.map_below(bound as usize)?;
        Ok(bound)
    }

    /// Slots ready for new flows: never handed out, or in the ring.
    pub fn free(&self) -> u64 {
        let (p, c) = (
            self.prod().load(Ordering::Acquire),
            self.cons().load(Ordering::Acquire),
        );
        let never = (self.capacity as u64).saturating_sub(self.fresh());
        never + p.saturating_sub(c)
    }

    fn generation_atomic(&self, i: u32) -> &AtomicU64 {
        // SAFETY: an aligned u64 of the mapping, shared with the kernel.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.slots.at(i as usize)).generation) }
    }

    /// The slot's generation: odd while a flow owns it.
    pub fn generation(&self, i: u32) -> u64 {
        self.generation_atomic(i).load(Ordering::Acquire)
    }

    /// The slot's key (stable once the generation was seen odd).
    pub fn key(&self, i: u32) -> FlowKey {
        // SAFETY: plain data of the mapping.
        unsafe { std::ptr::read_volatile(&raw const (*self.slots.at(i as usize)).key) }
    }

    /// The free marker (`FlowKey::hook`) of a slot no flow owns.
    pub fn marker(&self, i: u32) -> u8 {
        // SAFETY: plain data of the mapping.
        unsafe { std::ptr::read_volatile(&raw const (*self.slots.at(i as usize)).key.hook) }
    }

    /// The slot's counters, each read whole (CPUs add to them meanwhile).
    pub fn stats(&self, i: u32) -> FlowStats {
        let v = self.slots.at(i as usize);
        // SAFETY: aligned fields of the mapping; the kernel writes them with
        // atomic adds or aligned stores, which these loads never tear.
        unsafe {
            let u64_at = |p: *mut u64| AtomicU64::from_ptr(p).load(Ordering::Relaxed);
            let u32_at = |p: *mut u32| AtomicU32::from_ptr(p).load(Ordering::Relaxed);
            let s = &raw mut (*v).stats;
            FlowStats {
                skbs: u64_at(&raw mut (*s).skbs),
                extra_segments: u64_at(&raw mut (*s).extra_segments),
                bytes: u64_at(&raw mut (*s).bytes),
                overhead_bytes: u64_at(&raw mut (*s).overhead_bytes),
                first_seen_jiffies: u64_at(&raw mut (*s).first_seen_jiffies),
                last_seen_jiffies: u64_at(&raw mut (*s).last_seen_jiffies),
                tcp_flags: u32_at(&raw mut (*s).tcp_flags),
                oversize_packets: u32_at(&raw mut (*s).oversize_packets),
            }
        }
    }

    /// Step one of giving a slot back, first part: no lookup finds it any
    /// more (its index entry removed).
    pub fn unindex(&self, i: u32) {
        self.index.remove(&self.key(i), self.seed(), i);
    }

    /// The live slot the index gives `key`, if any.
    pub fn find(&self, key: &FlowKey) -> Option<u32> {
        let bound = self.in_use_bound().ok()?;
        self.index.find(key, self.seed(), |i| {
            i < bound && self.generation(i) & 1 == 1 && self.key(i) == *key
        })
    }

    /// Step one, second part: its generation made even, so that the next
    /// flush empties the CPUs' cache entries of it and no lookup finds it.
    /// (The caller reads its final counts a poll later.)
    pub fn end_generation(&self, i: u32) {
        let g = self.generation_atomic(i);
        let was = g.load(Ordering::Acquire);
        if was & 1 == 1 {
            g.store(was + 1, Ordering::Release);
        }
    }

    /// Step two: after its final counts were read, the slot is zeroed and
    /// goes back in the ring. Refuses (false) a slot that a flow owns or
    /// that is in the ring already, or one never handed out.
    pub fn give_back(&self, i: u32) -> bool {
        if i as u64 >= self.fresh() || self.generation(i) & 1 == 1 || self.marker(i) == SLOT_IN_RING
        {
            return false;
        }
        let prod = self.prod().load(Ordering::Acquire);
        if prod - self.cons().load(Ordering::Acquire) >= self.capacity as u64 {
            // Every slot is in the ring already: this one cannot be free.
            return false;
        }
        // SAFETY: no flow owns the slot and no CPU can reach it (step one
        // was at least a poll ago); the ring position is past `prod`.
        unsafe {
            let v = self.slots.at(i as usize);
            (&raw mut (*v).stats).write_volatile(FlowStats::default());
            (&raw mut (*v).key.hook).write_volatile(SLOT_IN_RING);
            *self.ring.at((prod % self.capacity as u64) as usize) = i as u64;
        }
        // Publishes the index written above.
        self.prod().store(prod + 1, Ordering::Release);
        true
    }
}
