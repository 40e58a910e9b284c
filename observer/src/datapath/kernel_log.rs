//! The programs' own diagnostics of rare events (aya-log): why a packet
//! went unparsed, with the header and offset (debug), and a flow-map insert
//! that failed (warn). Off unless `observer run --ebpf-log LEVEL` asks:
//! the level is a constant in the object's read-only data, so the verifier
//! removes the disabled logging code and the packet path pays nothing.
//! Records are shown through `tracing`, target `observer::ebpf`.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use clap::ValueEnum;
use tokio::io::{Interest, unix::AsyncFd};

/// The global in the object that holds the level (ours: aya-log-ebpf's
/// own, `AYA_LOG_LEVEL`, defaults to every level and is left so).
pub(super) const LEVEL_GLOBAL: &str = "OBSERVER_LOG_LEVEL";

/// The most detailed kernel log records to produce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum KernelLogLevel {
    /// None (the default).
    #[default]
    Off,
    Error,
    /// Flow-map insert failures (the map is full).
    Warn,
    Info,
    /// And why packets went unparsed: which header, at which byte.
    Debug,
    Trace,
}

impl KernelLogLevel {
    /// The value of [`LEVEL_GLOBAL`]: aya-log's `Level` numbers (error 1
    /// ... trace 5), records at or below it are written.
    pub(super) fn global_value(self) -> u8 {
        self as u8
    }
}

/// Reads the records the programs write and shows them.
pub struct KernelLog(EbpfLogger<ToTracing>);

impl KernelLog {
    /// Takes the object's log ring buffer (before the programs run, so
    /// that no record is missed).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let logger = EbpfLogger::init_with_logger(ebpf, ToTracing)
            .context("opening the eBPF programs' log ring buffer")?;
        Ok(Self(logger))
    }

    /// Shows every record written so far.
    pub fn flush(&mut self) {
        self.0.flush();
    }

    /// Shows records as they come, until the runtime stops.
    pub fn spawn(self) -> Result<tokio::task::JoinHandle<()>> {
        // SAFETY: the fd is the ring buffer map's, owned by the logger that
        // the AsyncFd owns: open, and the same, for the AsyncFd's lifetime.
        let mut ring = unsafe { AsyncFd::register_with_interest(self.0, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("watching the eBPF programs' log ring buffer")?;
        Ok(tokio::spawn(async move {
            loop {
                let mut ready = match ring.readable_mut().await {
                    Ok(ready) => ready,
                    Err(e) => {
                        tracing::warn!("the eBPF programs' log stopped: {e}");
                        return;
                    }
                };
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
        }))
    }
}

/// aya-log speaks `log`; the daemon logs with `tracing`. Records keep
/// their level where the daemon's default filter shows it (error, warn)
/// and are shown at info otherwise: asking for `--ebpf-log debug` is
/// enough to see them, whatever `OBSERVER_LOG` says.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "observer::ebpf", "{message}"),
            log::Level::Warn => tracing::warn!(target: "observer::ebpf", "{message}"),
            level => tracing::info!(target: "observer::ebpf", kernel_level = %level, "{message}"),
        }
    }

    fn flush(&self) {}
}
