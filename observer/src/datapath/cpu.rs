//! Which CPUs this thread may run on, and pinning it to one: BPF_PROG_TEST_RUN
//! runs a program on the calling thread's CPU, so benchmarks and tests that
//! compare or combine runs choose that CPU.

use std::io;

/// The CPUs this thread may run on, in increasing order.
pub fn allowed() -> io::Result<Vec<usize>> {
    let set = affinity()?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: reads a set the kernel filled.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// This thread pinned to one CPU until dropped (then its old mask again).
pub struct Pinned {
    pub cpu: usize,
    old: libc::cpu_set_t,
}

impl Pinned {
    pub fn to(cpu: usize) -> io::Result<Self> {
        let old = affinity()?;
        // SAFETY: cpu_set_t is plain data; the call gets a valid pointer.
        unsafe {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { cpu, old })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: restores the mask read in `to`.
        unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.old) };
    }
}

fn affinity() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the call gets a valid pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}
