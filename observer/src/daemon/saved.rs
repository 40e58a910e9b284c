//! The daemon's counts saved to a file, so that a restarted or upgraded
//! daemon goes on from where the last one was: its flow table (what it had
//! read of each kernel entry), the interfaces' totals it had read, and the
//! values of the traffic metrics. Saved at shutdown and every
//! [`SAVE_EVERY`], so that even after a crash the counters neither go back
//! nor count anything twice: the kernel's pinned maps hold everything
//! counted since, and the next daemon reads it as growth.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use observer_common::IfaceTotals;
use serde::{Deserialize, Serialize};

use crate::{export::metrics::SavedMetrics, flows::table::SavedTable};

/// How often the state is saved besides at shutdown.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

/// First bytes of the file; a new layout of [`Saved`] gets a new one.
const MAGIC: &[u8] = b"observer-state 2\n";

#[derive(Serialize, Deserialize)]
pub struct Saved {
    /// The kernel's id of the flow map the table was read from.
    pub flows_map_id: u32,
    /// When it was saved (ms since the Unix epoch).
    pub saved_at_ms: u64,
    pub table: SavedTable,
    /// What the polls knew of each kernel slot (`datapath::tracker`,
    /// encoded), for maps that are the same.
    pub slots: Vec<u8>,
    /// (ifindex, totals as last read) of the attached interfaces.
    pub interfaces: Vec<(u32, IfaceTotals)>,
    pub metrics: SavedMetrics,
}

impl Saved {
    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Writes the state atomically (a new file renamed over the old one),
/// readable by root only.
pub fn write(path: &Path, saved: &Saved) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let body = postcard::to_stdvec(saved).context("encoding the saved state")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the state file", dir.display()))?;
    }
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(MAGIC)?;
    f.write_all(&body)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads the state an earlier daemon saved; `None` when there is none.
pub fn read(path: &Path) -> Result<Option<Saved>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let decoded = if let Some(body) = bytes.strip_prefix(MAGIC) {
        postcard::from_bytes(body)
    } else if let Some(body) = bytes.strip_prefix(v1::MAGIC) {
        postcard::from_bytes::<v1::Saved>(body).map(v1::Saved::upgrade)
    } else {
        bail!(
            "{} is not a state file of this version (written by another observer?)",
            path.display()
        );
    };
    let saved =
        decoded.with_context(|| format!("decoding {} (truncated or corrupt)", path.display()))?;
    Ok(Some(saved))
}

/// The first format, written by daemons that kept whole flow entries in a
/// kernel hash: read so that an upgrade keeps every flow's totals.
mod v1 {
    use observer_common::{FlowKey, IfaceTotals};
    use serde::Deserialize;

    use crate::{
        export::metrics::SavedMetrics,
        flows::table::{Counters, SavedTable},
    };

    pub const MAGIC: &[u8] = b"observer-state 1\n";

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub struct Saved {
        pub _flows_map_id: u32,
        pub saved_at_ms: u64,
        pub table: Table,
        pub interfaces: Vec<(u32, IfaceTotals)>,
        pub metrics: SavedMetrics,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub struct Table {
        pub entries: Vec<(FlowKey, Entry)>,
        pub lru_evictions: u64,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(serde::Serialize))]
    pub struct Entry {
        pub retired: Counters,
        pub current: Counters,
        pub first_seen: u64,
        pub last_seen: u64,
        pub tcp_flags: u32,
        pub _kernel_first_seen: u64,
        pub _in_kernel: bool,
        pub _seen_in_poll: u64,
        pub _grew_in_poll: u64,
    }

    impl Saved {
        /// Its maps had another layout, so they are never the new daemon's:
        /// map id 0 (no map has it) says so, and each flow keeps its totals.
        pub fn upgrade(self) -> super::Saved {
            let flows = self.table.entries.into_iter().map(|(key, e)| {
                let mut total = e.retired;
                total.add(&e.current);
                (key, total, e.first_seen, e.last_seen, e.tcp_flags)
            });
            super::Saved {
                flows_map_id: 0,
                saved_at_ms: self.saved_at_ms,
                table: SavedTable::without_slots(flows, self.table.lru_evictions),
                slots: Vec::new(),
                interfaces: self.interfaces,
                metrics: self.metrics,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert!(read(&path).unwrap().is_none());
        let saved = Saved {
            flows_map_id: 42,
            saved_at_ms: 7,
            table: crate::flows::table::FlowTable::default().save(),
            slots: Vec::new(),
            interfaces: vec![(3, IfaceTotals::default())],
            metrics: SavedMetrics::default(),
        };
        write(&path, &saved).unwrap();
        let back = read(&path).unwrap().unwrap();
        assert_eq!((back.flows_map_id, back.interfaces.len()), (42, 1));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Anything else is refused with a reason, not misread.
        std::fs::write(&path, b"garbage").unwrap();
        let err = read(&path).err().unwrap().to_string();
        assert!(err.contains("not a state file"), "{err}");
        std::fs::write(&path, [MAGIC, &[1, 2]].concat()).unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn a_first_format_file_keeps_every_flow_total() {
        use observer_common::FlowKey;

        use crate::flows::table::{Counters, FlowTable};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let counters = |packets| Counters {
            packets,
            bytes: 100 * packets,
            skbs: packets,
            ..Default::default()
        };
        let key = FlowKey {
            src_port: 7,
            ..Default::default()
        };
        let old = v1::Saved {
            _flows_map_id: 42,
            saved_at_ms: 7,
            table: v1::Table {
                entries: vec![(
                    key,
                    v1::Entry {
                        retired: counters(3),
                        current: counters(2),
                        first_seen: 10,
                        last_seen: 20,
                        tcp_flags: 0x12,
                        _kernel_first_seen: 15,
                        _in_kernel: true,
                        _seen_in_poll: 4,
                        _grew_in_poll: 4,
                    },
                )],
                lru_evictions: 1,
            },
            interfaces: vec![(3, IfaceTotals::default())],
            metrics: SavedMetrics::default(),
        };
        let body = postcard::to_stdvec(&old).unwrap();
        std::fs::write(&path, [v1::MAGIC, &body].concat()).unwrap();
        let back = read(&path).unwrap().unwrap();
        // Never taken for the new daemon's maps.
        assert_eq!(back.flows_map_id, 0);
        let mut table = FlowTable::default();
        table.restore(back.table, false);
        let (k, e) = table.iter().next().unwrap();
        assert_eq!(*k, key);
        assert_eq!(e.counters(), counters(5));
        assert_eq!((e.first_seen, e.last_seen, e.tcp_flags), (10, 20, 0x12));
    }
}
