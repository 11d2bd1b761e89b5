//! Prometheus text exposition of the agent's counters and gauges.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::runtime::Agent;

pub fn render(agent: &Agent) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP gleaner_tasks Tasks known to the agent, by state."
    );
    let _ = writeln!(out, "# TYPE gleaner_tasks gauge");
    for (state, n) in agent.counts_by_state() {
        let _ = writeln!(out, "gleaner_tasks{{state=\"{state}\"}} {n}");
    }
    let c = &agent.counters;
    for (name, help, v) in [
        (
            "gleaner_task_launches_total",
            "Task runs that reached exec.",
            &c.launches,
        ),
        (
            "gleaner_task_launch_failures_total",
            "Task runs that failed before exec.",
            &c.launch_failures,
        ),
        (
            "gleaner_task_restarts_total",
            "Relaunches by restart policy.",
            &c.restarts,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    out
}
