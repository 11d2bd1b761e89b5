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
    let roles = agent.reservations();
    for (name, help) in [
        ("gleaner_role_reserved_cpus", "CPUs reserved per role."),
        (
            "gleaner_role_allocated_cpus",
            "CPUs held by running tasks per role.",
        ),
        (
            "gleaner_role_reserved_mem_mb",
            "Memory reserved per role (MB).",
        ),
        (
            "gleaner_role_allocated_mem_mb",
            "Memory held by running tasks per role (MB).",
        ),
        ("gleaner_role_queued_tasks", "Tasks waiting per role."),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (role, u) in &roles {
            let v = match name {
                "gleaner_role_reserved_cpus" => u.reserved.cpus,
                "gleaner_role_allocated_cpus" => u.allocated.cpus,
                "gleaner_role_reserved_mem_mb" => u.reserved.mem_mb,
                "gleaner_role_allocated_mem_mb" => u.allocated.mem_mb,
                _ => u.queued as f64,
            };
            let _ = writeln!(out, "{name}{{role=\"{role}\"}} {v}");
        }
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
        (
            "gleaner_preemptions_total",
            "Tasks preempted by reservation changes.",
            &c.preemptions,
        ),
        (
            "gleaner_image_fetches_total",
            "Rootfs images fetched into the cache.",
            agent.image_counters().0,
        ),
        (
            "gleaner_image_evictions_total",
            "Rootfs images evicted from the cache.",
            agent.image_counters().1,
        ),
        (
            "gleaner_image_proofs_total",
            "Cached rootfs images a new role or URI downloaded and hashed before use.",
            agent.image_counters().2,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    for (name, help, v) in [
        (
            "gleaner_disk_scan_seconds",
            "Time the last disk quota sweep took.",
            c.disk_scan_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gleaner_disk_scan_tasks",
            "Tasks the last disk quota sweep measured.",
            c.disk_scanned.load(Ordering::Relaxed) as f64,
        ),
        (
            "gleaner_sched_pass_seconds",
            "Time the last scheduling pass took (up to its launches).",
            c.sched_pass_us.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gleaner_sched_pass_tasks",
            "Tasks the last scheduling pass walked.",
            c.sched_pass_tasks.load(Ordering::Relaxed) as f64,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    out
}
