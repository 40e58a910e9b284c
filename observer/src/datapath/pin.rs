//! Pins on the BPF file system, so that counting outlives the daemon: a
//! restarted or upgraded daemon finds the maps (and, on TCX, the links) of
//! the one before and goes on from where it was, and packets are counted
//! while no daemon runs.
//!
//! Layout under the root (default `/sys/fs/bpf/observer`):
//! - `maps-<layout>/<MAP>`: the maps, in a directory named by a hash of
//!   their definitions (type, sizes, capacity) and [`MAP_ABI`], so that a
//!   version whose maps differ gets new ones instead of misreading old ones;
//! - `links/<ifindex>-<ingress|egress>`: TCX links (clsact filters live in
//!   the kernel's tc tables and need no pin).

use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use sha1::{Digest as _, Sha1};

/// Raised by hand when the meaning of a map's bytes changes without its
/// sizes changing, so that the new version does not reuse the old maps.
pub const MAP_ABI: u32 = 9;

/// The maps that carry counts across restarts (`FLOW_CACHE` too: counts wait
/// there to be flushed into the slots). `CLOCK` is rewritten on every read.
pub const PINNED_MAPS: [&str; 11] = [
    observer_common::FLOW_INDEX_MAP,
    observer_common::SLOTS_MAP,
    observer_common::FREE_RING_MAP,
    observer_common::RING_HEAD_MAP,
    observer_common::FLOW_CACHE_MAP,
    observer_common::IFACE_TOTALS_MAP,
    observer_common::ENCAP_TOTALS_MAP,
    observer_common::FLUSHED_IFACE_TOTALS_MAP,
    observer_common::FLUSHED_ENCAP_TOTALS_MAP,
    observer_common::STATS_MAP,
    observer_common::MTU_LIMITS_MAP,
];

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where our pins live.
#[derive(Clone, Debug)]
pub struct PinRoot {
    root: PathBuf,
}

impl PinRoot {
    /// Opens (creates) the pin directory, mounting the BPF file system at
    /// `/sys/fs/bpf` first if the root is under it and nothing is mounted.
    pub fn open(root: &Path) -> Result<Self> {
        ensure_bpffs(root)?;
        for dir in [root.to_owned(), root.join("links")] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the pin directory {}", dir.display()))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The directory of the maps of one layout.
    pub fn maps_dir(&self, layout: &str) -> PathBuf {
        self.root.join(format!("maps-{layout}"))
    }

    /// The pin of a TCX link.
    pub fn link(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.root.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Every pinned link: (ifindex, hook, path).
    pub fn links(&self) -> Vec<(u32, String, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (ifindex, hook) = name.split_once('-')?;
                Some((ifindex.parse().ok()?, hook.to_owned(), e.path()))
            })
            .collect()
    }

    /// Removes the maps of every other layout (an older version's): their
    /// memory is freed once no program uses them any more.
    pub fn remove_other_layouts(&self, keep: &str) {
        let keep = format!("maps-{keep}");
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("maps-") && name != keep {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::info!(dir = %e.path().display(), "removed the maps of an older layout")
                    }
                    Err(err) => {
                        tracing::warn!(dir = %e.path().display(), "removing old maps: {err}")
                    }
                }
            }
        }
    }

    /// Removes every pin (maps and links) and the root itself.
    pub fn remove_all(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// A short hash of the pinned maps' definitions with `flow_capacity` slots
/// in the flow map: equal hashes mean the pinned maps can be reused. Maps
/// that are not pinned (the log ring, the clock, read-only data) do not
/// take part: changing them keeps the counts in place.
pub fn layout_id(object: &[u8], flow_capacity: u32) -> Result<String> {
    let obj = aya_obj::Object::parse(object).context("parsing the eBPF object")?;
    let mut maps: Vec<_> = obj
        .maps
        .iter()
        .filter(|(name, _)| PINNED_MAPS.contains(&name.as_str()))
        .collect();
    maps.sort_by(|a, b| a.0.cmp(b.0));
    let mut text = format!("abi {MAP_ABI}\n");
    for (name, m) in maps {
        let per_flow = [observer_common::SLOTS_MAP, observer_common::FREE_RING_MAP];
        let entries = if per_flow.contains(&name.as_str()) {
            flow_capacity
        } else if name == observer_common::FLOW_INDEX_MAP {
            observer_common::index::index_entries(flow_capacity)
        } else {
            m.max_entries()
        };
        let _ = writeln!(
            text,
            "{name} type {} key {} value {} entries {entries} flags {}",
            m.map_type(),
            m.key_size(),
            m.value_size(),
            m.map_flags()
        );
    }
    let digest = Sha1::digest(text.as_bytes());
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

/// Makes sure `path` is on a BPF file system: mounts one at `/sys/fs/bpf`
/// when the path is below it and the host has none mounted there.
fn ensure_bpffs(path: &Path) -> Result<()> {
    let bpf = Path::new("/sys/fs/bpf");
    if is_bpffs(nearest_existing(path)) {
        return Ok(());
    }
    if path.starts_with(bpf) && !is_bpffs(bpf) {
        mount_bpffs(bpf)?;
        tracing::warn!(
            "mounted a BPF file system at /sys/fs/bpf (none was there): the pins outlive this \
             daemon only if this is the host's mount namespace (`ip netns exec` makes one of \
             its own); mount it on the host to keep counts across restarts"
        );
        if is_bpffs(nearest_existing(path)) {
            return Ok(());
        }
    }
    bail!(
        "{} is not on a BPF file system: mount one (`mount -t bpf bpf /sys/fs/bpf`; in a \
         DaemonSet, a hostPath volume of /sys/fs/bpf) or choose another --pin-path",
        path.display()
    )
}

/// A BPF file system of its own at `at` (created; a no-op when one is
/// there): for the lab and tests, whose daemons run under `ip netns exec`,
/// which hides the host's `/sys/fs/bpf`.
pub fn mount_private_bpffs(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    if is_bpffs(at) {
        return Ok(());
    }
    mount_bpffs(at)
}

/// Unmounts what [`mount_private_bpffs`] mounted (lazily: a daemon still
/// exiting keeps its view until it is gone).
pub fn unmount(at: &Path) {
    let Ok(c) = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: umount2(2) with a valid C string.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
}

fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) with a valid C string and a zeroed out-struct.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).ok();
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: mount(2) with valid C strings.
    let ret = unsafe {
        libc::mount(
            c("bpf").as_ptr(),
            target.as_ptr(),
            c("bpf").as_ptr(),
            0,
            c("mode=0700").as_ptr().cast(),
        )
    };
    if ret != 0 {
        bail!(
            "mounting a BPF file system at {}: {}",
            at.display(),
            io::Error::last_os_error()
        );
    }
    tracing::info!(at = %at.display(), "mounted a BPF file system");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_follows_the_capacity() {
        let object = super::super::object::OBJECT;
        let a = layout_id(object, 65_536).unwrap();
        assert_eq!(a, layout_id(object, 65_536).unwrap());
        assert_ne!(a, layout_id(object, 131_072).unwrap());
        assert_eq!(a.len(), 12);
    }
}
