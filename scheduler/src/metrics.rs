//! What `/metrics` shows: the leader's pass figures and this replica's role.
//! Process-local counters, not fleet state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub leader: AtomicBool,
    pub placements: AtomicU64,
    pub passes: AtomicU64,
    pub moved: AtomicU64,
    pub elections_won: AtomicU64,
    /// Seconds, of the last pass.
    pub last_pass_s: Mutex<f64>,
    pub pending: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let leader = self.leader.load(Ordering::Relaxed) as u8;
        let _ = writeln!(
            s,
            "# TYPE gleaner_scheduler_leader gauge\ngleaner_scheduler_leader {leader}"
        );
        for (name, v) in [
            ("placements_total", &self.placements),
            ("passes_total", &self.passes),
            ("moved_total", &self.moved),
            ("elections_won_total", &self.elections_won),
        ] {
            let _ = writeln!(
                s,
                "# TYPE gleaner_scheduler_{name} counter\ngleaner_scheduler_{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let pass = *self.last_pass_s.lock().unwrap();
        let _ = writeln!(
            s,
            "# TYPE gleaner_scheduler_pass_seconds gauge\ngleaner_scheduler_pass_seconds {pass}"
        );
        let _ = writeln!(s, "# TYPE gleaner_scheduler_pending gauge");
        for (q, n) in self.pending.lock().unwrap().iter() {
            let _ = writeln!(s, "gleaner_scheduler_pending{{queue=\"{q}\"}} {n}");
        }
        s
    }
}
