//! The flows' timestamps are kernel jiffies (free to read per packet, where
//! a nanosecond clock costs a fifth of the budget). This turns them into
//! time: the `clock` program, run with BPF_PROG_TEST_RUN, reads jiffies and
//! CLOCK_MONOTONIC together; two readings apart give the tick length.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use observer_common::ClockSample;

use super::{Datapath, object, testrun};

/// Tick rates Linux is built with (CONFIG_HZ).
const KERNEL_HZ: [u64; 5] = [100, 250, 300, 1000, 1200];

/// A minimal frame for the clock program (the kernel wants an Ethernet
/// header's worth of data).
const FRAME: [u8; 14] = [0; 14];

impl Datapath {
    /// Reads jiffies and CLOCK_MONOTONIC at the same moment.
    pub fn clock_sample(&self) -> Result<ClockSample> {
        testrun::run(&self.ebpf, object::CLOCK, &FRAME, None, 1)?;
        self.clock.get(&0, 0).context("reading the clock map")
    }

    /// Measures the length of a jiffy (two readings `gap` apart, snapped to
    /// the tick rates Linux is built with).
    pub fn jiffy_ns(&self, gap: Duration) -> Result<u64> {
        let a = self.clock_sample()?;
        std::thread::sleep(gap);
        let b = self.clock_sample()?;
        let ticks = b.jiffies.saturating_sub(a.jiffies);
        if ticks == 0 {
            bail!("jiffies did not advance in {gap:?}");
        }
        let hz = 1e9 * ticks as f64 / (b.monotonic_ns - a.monotonic_ns) as f64;
        let nearest = KERNEL_HZ
            .iter()
            .min_by(|x, y| (**x as f64 - hz).abs().total_cmp(&(**y as f64 - hz).abs()))
            .copied()
            .unwrap_or(250);
        Ok(1_000_000_000 / nearest)
    }
}

/// Maps jiffies to wall-clock time, anchored at one sample.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: ClockSample,
    wall_at_anchor: SystemTime,
    pub jiffy_ns: u64,
}

impl Clock {
    pub fn new(anchor: ClockSample, jiffy_ns: u64) -> Self {
        Self {
            anchor,
            wall_at_anchor: SystemTime::now(),
            jiffy_ns,
        }
    }

    /// Jiffies now (at the anchor).
    pub fn now_jiffies(&self) -> u64 {
        self.anchor.jiffies
    }

    /// Jiffies in a duration (rounded up).
    pub fn jiffies_in(&self, d: Duration) -> u64 {
        (d.as_nanos() as u64).div_ceil(self.jiffy_ns)
    }

    pub fn wall(&self, jiffies: u64) -> SystemTime {
        let j = self.anchor.jiffies;
        if jiffies <= j {
            self.wall_at_anchor - Duration::from_nanos((j - jiffies) * self.jiffy_ns)
        } else {
            self.wall_at_anchor + Duration::from_nanos((jiffies - j) * self.jiffy_ns)
        }
    }

    pub fn rfc3339(&self, jiffies: u64) -> String {
        humantime::format_rfc3339_millis(self.wall(jiffies)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jiffies_map_around_the_anchor() {
        let c = Clock::new(
            ClockSample {
                jiffies: 1000,
                monotonic_ns: 0,
            },
            4_000_000,
        );
        assert_eq!(
            c.wall_at_anchor.duration_since(c.wall(750)).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(
            c.wall(1250).duration_since(c.wall_at_anchor).unwrap(),
            Duration::from_secs(1)
        );
        assert_eq!(c.jiffies_in(Duration::from_millis(10)), 3);
    }
}
