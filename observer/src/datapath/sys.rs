//! The two bpf(2) map commands aya 0.14 does not wrap: batch lookup
//! (one syscall per few thousand flows instead of one per flow) and
//! lookup-and-delete of one element (read a flow's final counts as it is
//! evicted, so nothing counted between the read and the delete is lost).

use std::{io, mem::size_of, os::fd::RawFd};

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`, sized generously; unused bytes must be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<()> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, size_of::<Attr>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads every element of a hash map with `BPF_MAP_LOOKUP_BATCH`, calling
/// `each` for every key/value pair. `K` and `V` must be the map's exact
/// key and value types (plain old data).
pub fn lookup_batch<K: Copy + Default, V: Copy + Default>(
    map_fd: RawFd,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut chunk = chunk.max(16);
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // Hash maps use a 32-bit bucket cursor as the batch token.
    let mut in_batch: u32 = 0;
    let mut out_batch: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = Attr::new();
        attr.put_u64(
            0,
            if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
        );
        attr.put_u64(8, &mut out_batch as *mut u32 as u64);
        attr.put_u64(16, keys.as_mut_ptr() as u64);
        attr.put_u64(24, values.as_mut_ptr() as u64);
        attr.put_u32(32, chunk as u32);
        attr.put_u32(36, map_fd as u32);
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let count = (attr.get_u32(32) as usize).min(chunk);
        let last = match res {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && count == 0 && chunk < 1 << 22 => {
                // One bucket holds more than `chunk` elements: grow and read
                // the same bucket again.
                chunk *= 2;
                keys.resize(chunk, K::default());
                values.resize(chunk, V::default());
                continue;
            }
            Err(e) => return Err(e),
        };
        for i in 0..count {
            each(&keys[i], &values[i]);
        }
        if last {
            return Ok(());
        }
        in_batch = out_batch;
        first = false;
    }
}

/// Atomically reads and deletes one element; `Ok(None)` if it is gone.
pub fn lookup_and_delete<K: Copy, V: Copy + Default>(
    map_fd: RawFd,
    key: &K,
) -> io::Result<Option<V>> {
    let mut value = V::default();
    let mut attr = Attr::new();
    attr.put_u32(0, map_fd as u32);
    attr.put_u64(8, key as *const K as u64);
    attr.put_u64(16, &mut value as *mut V as u64);
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}
