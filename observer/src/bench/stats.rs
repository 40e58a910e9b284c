//! Medians and spread of repeated measurements: every figure in the report
//! is a [`Summary`] of its samples, never a single run.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    pub median: f64,
    /// Interquartile range: the spread the report quotes.
    pub p25: f64,
    pub p75: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summary of `samples` (NaN-free); all zero when there are none.
    pub fn of(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Self {
            n: s.len(),
            median: quantile(&s, 0.5),
            p25: quantile(&s, 0.25),
            p75: quantile(&s, 0.75),
            min: s[0],
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        }
    }

    /// "median (IQR p25–p75, n=N)" with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} (IQR {:.d$}–{:.d$}, n={})",
            self.median,
            self.p25,
            self.p75,
            self.n,
            d = digits
        )
    }
}

/// Mean of the samples between the `cut` and `1 - cut` quantiles: steadier
/// than the median when a clock's step coarsens the samples, and unlike the
/// plain mean not swayed by rare outliers (interrupts).
pub fn trimmed_mean(samples: &[f64], cut: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let k = (s.len() as f64 * cut) as usize;
    let mid = &s[k..s.len() - k];
    if mid.is_empty() {
        return 0.0;
    }
    mid.iter().sum::<f64>() / mid.len() as f64
}

/// Linear interpolation between the closest ranks of sorted `s`.
fn quantile(s: &[f64], q: f64) -> f64 {
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.p25, s.p75), (3.0, 2.0, 4.0));
        assert_eq!((s.min, s.max, s.mean, s.n), (1.0, 5.0, 3.0, 5));
        assert_eq!(Summary::of(&[1.0, 2.0]).median, 1.5);
        assert_eq!(Summary::of(&[]).n, 0);
        let mut v = vec![10.0; 18];
        v.extend([0.0, 1000.0]);
        assert_eq!(trimmed_mean(&v, 0.05), 10.0);
    }
}
