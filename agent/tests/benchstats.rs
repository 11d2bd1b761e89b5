//! The benchmarks' intervals (agent/benches/stats.rs) on the vectors
//! bench/benchlib.py is checked against (same answers in both languages).

#[path = "../benches/stats.rs"]
mod stats;

use stats::*;

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-3)
}

#[test]
fn median_interval_uses_the_binomial_order_statistics() {
    let xs: Vec<f64> = (1..=20).rev().map(f64::from).collect();
    let (m, lo, hi) = median_interval(&xs);
    assert_eq!(m, 10.5);
    // n = 20: the 6th and the 15th (P(B < 6) = 2.07 %, P(B < 7) = 5.77 %).
    assert!(close(lo, 6.0) && close(hi, 15.0), "{lo:?} {hi:?}");
    let (m, lo, hi) = median_interval(&[6.0, 1.0, 5.0, 2.0, 4.0, 3.0]);
    assert_eq!((m, lo, hi), (3.5, Some(1.0), Some(6.0)));
    // Five samples cannot give 95 % (the extremes cover 93.75 %).
    assert_eq!(
        median_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]),
        (3.0, None, None)
    );
}

#[test]
fn median_interval_of_many_samples_is_narrow_and_ordered() {
    let xs: Vec<f64> = (0..2000).map(|i| f64::from((i * 7919) % 2000)).collect();
    let (m, lo, hi) = median_interval(&xs);
    let (lo, hi) = (lo.unwrap(), hi.unwrap());
    assert!(lo < m && m < hi, "{lo} {m} {hi}");
    // sqrt(n)/2 * 1.96 ~ 44 ranks either side of the middle.
    assert!((hi - lo) < 100.0 && (hi - lo) > 70.0, "{lo} {hi}");
}

#[test]
fn mean_interval_is_student_t() {
    let (m, lo, hi) = mean_interval(&[1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(m, 3.0);
    // sd = 1.5811, t(4) = 2.776: 3 -+ 1.963
    assert!(close(lo, 1.037) && close(hi, 4.963), "{lo:?} {hi:?}");
    assert_eq!(mean_interval(&[10.0]), (10.0, None, None));
    // Identical samples: a zero-width interval, not NaN.
    assert_eq!(mean_interval(&[2.0, 2.0]), (2.0, Some(2.0), Some(2.0)));
}

#[test]
fn python_benchlib_gives_the_same_answers() {
    // bench/benchlib.py's self-test asserts the vectors above.
    let lib = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/benchlib.py");
    match std::process::Command::new("python3").arg(lib).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("SKIP python benchlib self-test: python3: {e}"),
    }
}
