//! Intervals for interleaved benchmark rounds. The same two as
//! `bench/benchlib.py` (`median_interval`, `mean_interval`), tested on the
//! same vectors in `agent/tests/benchstats.rs`.
#![allow(dead_code)]

/// (value, low, high); low/high are None when there are too few samples.
pub type Interval = (f64, Option<f64>, Option<f64>);

/// Two-sided 95 % quantiles of Student's t; between rows the next smaller
/// df is used (wider, so conservative).
const T95: &[(usize, f64)] = &[
    (1, 12.706),
    (2, 4.303),
    (3, 3.182),
    (4, 2.776),
    (5, 2.571),
    (6, 2.447),
    (7, 2.365),
    (8, 2.306),
    (9, 2.262),
    (10, 2.228),
    (11, 2.201),
    (12, 2.179),
    (13, 2.160),
    (14, 2.145),
    (15, 2.131),
    (16, 2.120),
    (17, 2.110),
    (18, 2.101),
    (19, 2.093),
    (20, 2.086),
    (25, 2.060),
    (30, 2.042),
    (40, 2.021),
    (60, 2.000),
    (120, 1.980),
];

fn t95(df: usize) -> f64 {
    T95.iter()
        .rev()
        .find(|(k, _)| *k <= df)
        .map_or(f64::NAN, |r| r.1)
}

/// The mean and its 95 % Student t interval (None below 2 samples).
pub fn mean_interval(xs: &[f64]) -> Interval {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (m, None, None);
    }
    let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let h = t95(xs.len() - 1) * sd / n.sqrt();
    (m, Some(m - h), Some(m + h))
}

/// The median and its distribution-free 95 % interval from order
/// statistics: the k-th smallest and k-th largest, k the largest with
/// P(Binomial(n, 1/2) < k) <= 2.5 %. No assumption on the shape (launch
/// times have long tails); None below 6 samples.
pub fn median_interval(xs: &[f64]) -> Interval {
    let mut s = xs.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    // P(X = i) in log space: 2^-n underflows past n = 1074.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let (mut k, mut cdf, mut ln_comb) = (0usize, 0.0f64, 0.0f64);
    loop {
        let p = (ln_comb + ln_half_n).exp();
        if cdf + p > 0.025 || k >= n / 2 {
            break;
        }
        cdf += p;
        ln_comb += ((n - k) as f64).ln() - ((k + 1) as f64).ln();
        k += 1;
    }
    if k == 0 {
        return (med, None, None);
    }
    (med, Some(s[k - 1]), Some(s[n - k]))
}

/// `12.3 [11.0, 13.9]`, or a note when the interval needs more rounds.
pub fn fmt_interval((v, lo, hi): Interval, digits: usize) -> String {
    match (lo, hi) {
        (Some(lo), Some(hi)) => format!("{v:.digits$} [{lo:.digits$}, {hi:.digits$}]"),
        _ => format!("{v:.digits$} (interval needs more rounds)"),
    }
}
