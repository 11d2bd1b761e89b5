//! Fail-points and delays for tests that aim at a race window (issue 20).
//!
//! Honoured only in debug builds, and only when `GLEANER_TEST_HOOKS` names a
//! file; the file is read at every hook, so a test can change it while the
//! agent runs. One hook a line: `delay <point> <ms>`, `spin <point> <ms>`
//! (busy, not asleep), `fail <point>`, or
//! `limit <bound> <ms>` (a bound shortened so a test need not wait it out).
//! Release builds compile every hook to nothing.

use std::time::Duration;

const ENV: &str = "GLEANER_TEST_HOOKS";

/// The hook lines naming `point`, split in words.
fn lines(point: &str) -> Vec<Vec<String>> {
    if !cfg!(debug_assertions) {
        return Vec::new();
    }
    let Some(path) = std::env::var_os(ENV) else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| w.len() >= 2 && w[1] == point)
        .collect()
}

fn millis(kind: &str, point: &str) -> Option<Duration> {
    lines(point)
        .iter()
        .find(|w| w[0] == kind)
        .and_then(|w| w.get(2)?.parse().ok())
        .map(Duration::from_millis)
}

fn delay(point: &str) -> Option<Duration> {
    millis("delay", point)
}

/// `bound`, unless a test shortened it.
pub(crate) fn limit(bound: &str, default: Duration) -> Duration {
    millis("limit", bound).unwrap_or(default)
}

/// Sleeps if a test asked for a delay at `point`.
pub(crate) async fn pause(point: &str) {
    if let Some(d) = delay(point) {
        tracing::warn!(point, ?d, "test hook: delay");
        tokio::time::sleep(d).await;
    }
}

/// [`pause`] for blocking code.
pub(crate) fn pause_blocking(point: &str) {
    if let Some(d) = delay(point) {
        tracing::warn!(point, ?d, "test hook: delay");
        std::thread::sleep(d);
    }
    // `spin <point> <ms>`: busy for that long (a slow but live process).
    if let Some(d) = millis("spin", point) {
        let start = std::time::Instant::now();
        while start.elapsed() < d {
            std::hint::spin_loop();
        }
    }
}

/// True if a test asked `point` to fail.
pub(crate) fn fails(point: &str) -> bool {
    let fail = lines(point).iter().any(|w| w[0] == "fail");
    if fail {
        tracing::warn!(point, "test hook: failing");
    }
    fail
}
