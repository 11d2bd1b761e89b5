//! `harvest/<node>` (FLEET.md): a node's last hour of business use, the
//! reservation the monitor left to gleaner, and what batch used, for the
//! web console's charts. The agent samples every [`SAMPLE_EVERY_S`] and
//! rewrites the key under its lease every [`WRITE_EVERY_S`] (every sample
//! in its first minute); the ring
//! holds at most [`MAX_SAMPLES`], so the value and the write rate are
//! bounded (at most ~14 KB a minute per node).

use serde::{Deserialize, Serialize};

use crate::fleet::Keys;

/// `<prefix>/harvest/` (ends with `/`).
pub fn prefix(keys: &Keys) -> String {
    format!("{}/harvest/", keys.prefix)
}

/// `<prefix>/harvest/<node>`.
pub fn key(keys: &Keys, node: &str) -> String {
    format!("{}/harvest/{node}", keys.prefix)
}

pub const SAMPLE_EVERY_S: u64 = 15;
pub const WRITE_EVERY_S: u64 = 60;
/// One hour at [`SAMPLE_EVERY_S`].
pub const MAX_SAMPLES: usize = 240;
/// The order of a sample's numbers (kept in the value so `etcdctl get`
/// reads on its own).
pub const COLUMNS: [&str; 7] = [
    "t",
    "reserved_cpus",
    "reserved_mem_mb",
    "batch_cpus",
    "batch_mem_mb",
    "business_cpus",
    "business_mem_mb",
];

/// One sample: unix seconds, then the numbers named by [`COLUMNS`].
pub type Sample = [f64; 7];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarvestRing {
    pub node: String,
    pub every_s: u64,
    pub columns: Vec<String>,
    pub samples: Vec<Sample>,
}

impl HarvestRing {
    pub fn new(node: &str) -> HarvestRing {
        HarvestRing {
            node: node.to_owned(),
            every_s: SAMPLE_EVERY_S,
            columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
            samples: Vec::new(),
        }
    }

    /// Appends, dropping the oldest past [`MAX_SAMPLES`] and any sample not
    /// newer than the last (a clock step back must not fold the chart).
    /// Numbers are rounded (time to the second, CPUs to 0.001, MB to 0.1)
    /// so that a full ring stays under 14.5 KB.
    pub fn push(&mut self, s: Sample) {
        // Divided, not multiplied by the step: 57.0 / 1000.0 prints "0.057".
        let round = |x: f64, per: f64| (x * per).round() / per;
        let mut s = s;
        for (i, v) in s.iter_mut().enumerate() {
            *v = match i {
                0 => v.round(),
                1 | 3 | 5 => round(*v, 1000.0),
                _ => round(*v, 10.0),
            };
        }
        if self.samples.last().is_some_and(|l| l[0] >= s[0]) {
            self.samples.clear();
        }
        self.samples.push(s);
        let over = self.samples.len().saturating_sub(MAX_SAMPLES);
        self.samples.drain(..over);
    }
}

/// At most `points` samples, each the mean of consecutive samples (the
/// last one's time), for sparklines; the reservation keeps each bucket's
/// minimum so a shrink is never averaged away.
pub fn downsample(samples: &[Sample], points: usize) -> Vec<Sample> {
    if points == 0 || samples.is_empty() {
        return Vec::new();
    }
    let per = samples.len().div_ceil(points);
    samples
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            let mut out = [0.0; 7];
            out[0] = c[c.len() - 1][0];
            for i in 1..7 {
                out[i] = if i <= 2 {
                    c.iter().map(|s| s[i]).fold(f64::INFINITY, f64::min)
                } else {
                    c.iter().map(|s| s[i]).sum::<f64>() / n
                };
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ring_is_bounded_and_ordered() {
        let mut r = HarvestRing::new("a");
        for t in 0..(MAX_SAMPLES as i64 + 10) {
            r.push([t as f64, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        }
        assert_eq!(r.samples.len(), MAX_SAMPLES);
        assert_eq!(r.samples[0][0], 10.0);
        // Clock stepped back: start over rather than fold.
        r.push([0.0; 7]);
        assert_eq!(r.samples.len(), 1);
    }

    #[test]
    fn a_full_ring_stays_under_14_kb() {
        let mut r = HarvestRing::new("node-with-a-long-name-01");
        for t in 0..MAX_SAMPLES {
            r.push([
                1_795_336_919.0 + 15.0 * t as f64,
                15.123456789,
                64_000.123456,
                0.056735326997,
                1_234.567891,
                1.947274565463,
                28_836.773437,
            ]);
        }
        let len = serde_json::to_string(&r).unwrap().len();
        assert!(len <= 14_500, "{len} bytes");
        assert_eq!(r.samples[0][3], 0.057);
    }

    #[test]
    fn downsample_keeps_a_shrink() {
        let mut s: Vec<Sample> = (0..10)
            .map(|t| [t as f64, 4.0, 100.0, 1.0, 10.0, 1.0, 10.0])
            .collect();
        s[3][1] = 1.0;
        let d = downsample(&s, 2);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0][1], 1.0);
        assert_eq!(d[1][1], 4.0);
        assert_eq!(d[1][0], 9.0);
    }

    proptest! {
        #[test]
        fn downsample_never_exceeds_points(n in 0usize..500, points in 0usize..100) {
            let s: Vec<Sample> = (0..n).map(|t| [t as f64, 1.0, 1.0, 0.5, 1.0, 2.0, 3.0]).collect();
            let d = downsample(&s, points);
            prop_assert!(d.len() <= points);
            prop_assert_eq!(d.is_empty(), n == 0 || points == 0);
            if let (Some(a), Some(b)) = (d.last(), s.last()) {
                prop_assert_eq!(a[0], b[0]);
            }
        }
    }
}
