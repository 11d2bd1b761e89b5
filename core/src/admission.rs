//! Pure scheduling decisions: which queued work starts, which running work
//! is preempted. No I/O, no clock: the runtime feeds it snapshots.
//!
//! * A unit (a task, or a whole task group) starts when it fits both its
//!   role's free reservation and the host's free capacity.
//! * Within a role: priority (higher first), then submission order. The
//!   head of a role's queue blocks the ones behind it (no starvation of big
//!   tasks), except a unit larger than the role's whole reservation, which
//!   waits aside until the reservation grows.
//! * Across roles: the role with the lowest dominant share of the host goes
//!   first (DRF).
//! * Preemption on shrink: lowest priority first, then most recently
//!   started, until what is left fits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    pub cpus: f64,
    pub mem_mb: f64,
    #[serde(default)]
    pub disk_mb: f64,
}

/// Slack for float sums (0.1 + 0.2 style errors).
const EPS: f64 = 1e-9;

impl Amount {
    pub fn add(self, o: Amount) -> Amount {
        Amount {
            cpus: self.cpus + o.cpus,
            mem_mb: self.mem_mb + o.mem_mb,
            disk_mb: self.disk_mb + o.disk_mb,
        }
    }
    pub fn sub(self, o: Amount) -> Amount {
        Amount {
            cpus: self.cpus - o.cpus,
            mem_mb: self.mem_mb - o.mem_mb,
            disk_mb: self.disk_mb - o.disk_mb,
        }
    }
    /// Whether `self` fits in `room` (disk only counts where room has some).
    pub fn fits(self, room: Amount) -> bool {
        self.cpus <= room.cpus + EPS
            && self.mem_mb <= room.mem_mb + EPS
            && (room.disk_mb <= 0.0 || self.disk_mb <= room.disk_mb + EPS)
    }
    /// Whether `self` fits in what `limit` leaves after `used`. Disk counts
    /// only where the limit has some: a role's disk that is all used (free
    /// 0 or below) admits nothing more, rather than reading as no limit.
    pub fn fits_free(self, limit: Amount, used: Amount) -> bool {
        let free = limit.sub(used);
        self.cpus <= free.cpus + EPS
            && self.mem_mb <= free.mem_mb + EPS
            && (limit.disk_mb <= 0.0 || self.disk_mb <= free.disk_mb + EPS)
    }
    /// Largest fraction of `total` this amount takes (cpu or memory).
    pub fn dominant_share(self, total: Amount) -> f64 {
        let share = |a: f64, t: f64| if t > 0.0 { a / t } else { 0.0 };
        share(self.cpus, total.cpus).max(share(self.mem_mb, total.mem_mb))
    }
    pub fn clamp_to(self, cap: Amount) -> Amount {
        Amount {
            cpus: self.cpus.min(cap.cpus),
            mem_mb: self.mem_mb.min(cap.mem_mb),
            disk_mb: if cap.disk_mb > 0.0 {
                self.disk_mb.min(cap.disk_mb)
            } else {
                self.disk_mb
            },
        }
    }
}

/// Something waiting to start: a task or a task group.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub key: String,
    pub role: String,
    pub priority: i32,
    /// Submission order.
    pub seq: u64,
    pub need: Amount,
}

/// Something holding resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub key: String,
    pub role: String,
    pub priority: i32,
    /// Start order: higher started later.
    pub started_seq: u64,
    pub holds: Amount,
    /// A soft CPU weight (cpu_limit = shares): a smaller reservation
    /// throttles it through the role's quota; only memory preempts it.
    pub elastic_cpu: bool,
}

/// Why a queued unit did not start.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    NoReservation,
    LargerThanReservation { reserved: Amount },
    RoleFull { free: Amount },
    HostFull { free: Amount },
    BehindOthers { ahead: usize },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::NoReservation => write!(f, "waiting: its role has no reservation"),
            Wait::LargerThanReservation { reserved } => write!(
                f,
                "waiting: needs more than the role's whole reservation ({} cpus, {} MB); it starts when the reservation grows",
                reserved.cpus, reserved.mem_mb
            ),
            Wait::RoleFull { free } => {
                write!(f, "waiting for room in its role's reservation ({:.3} cpus, {:.0} MB free)", free.cpus, free.mem_mb)
            }
            Wait::HostFull { free } => {
                write!(f, "waiting for room on the host ({:.3} cpus, {:.0} MB free)", free.cpus, free.mem_mb)
            }
            Wait::BehindOthers { ahead } => write!(f, "waiting behind {ahead} queued task(s) of its role"),
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Keys to start, in order.
    pub start: Vec<String>,
    /// Why each other queued unit waits.
    pub waiting: BTreeMap<String, Wait>,
}

/// One scheduling pass over the queue.
pub fn admit(
    queue: &[Queued],
    running: &[Running],
    reservations: &BTreeMap<String, Amount>,
    host: Amount,
) -> Decision {
    let mut allocated: BTreeMap<&str, Amount> = BTreeMap::new();
    let mut host_used = Amount::default();
    for r in running {
        let a = allocated.entry(r.role.as_str()).or_default();
        *a = a.add(r.holds);
        host_used = host_used.add(r.holds);
    }
    // Per role, in queue order.
    let mut by_role: BTreeMap<&str, Vec<&Queued>> = BTreeMap::new();
    for q in queue {
        by_role.entry(q.role.as_str()).or_default().push(q);
    }
    for units in by_role.values_mut() {
        units.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
    }
    let mut decision = Decision::default();
    let mut cursor: BTreeMap<&str, usize> = BTreeMap::new();
    loop {
        // The next startable head of every role, with its role's share.
        let mut best: Option<(f64, &str, &Queued)> = None;
        for (role, units) in &by_role {
            let Some(reserved) = reservations.get(*role) else {
                continue;
            };
            let i = cursor.entry(role).or_default();
            // Units that can never fit the reservation wait aside.
            while *i < units.len() && !units[*i].need.fits(*reserved) {
                *i += 1;
            }
            let Some(head) = units.get(*i) else { continue };
            let used = allocated.get(role).copied().unwrap_or_default();
            if !head.need.fits_free(*reserved, used) || !head.need.fits_free(host, host_used) {
                continue;
            }
            let share = used.dominant_share(host);
            if best.is_none_or(|(s, r, _)| share < s || (share == s && *role < r)) {
                best = Some((share, role, head));
            }
        }
        let Some((_, role, head)) = best else { break };
        let a = allocated.entry(role).or_default();
        *a = a.add(head.need);
        host_used = host_used.add(head.need);
        decision.start.push(head.key.clone());
        *cursor.get_mut(role).expect("cursor") += 1;
    }
    // Explain the rest.
    for (role, units) in &by_role {
        let started: std::collections::HashSet<&str> =
            decision.start.iter().map(String::as_str).collect();
        let mut ahead = 0;
        for q in units.iter().filter(|q| !started.contains(q.key.as_str())) {
            let why = match reservations.get(*role) {
                None => Wait::NoReservation,
                Some(reserved) if !q.need.fits(*reserved) => Wait::LargerThanReservation {
                    reserved: *reserved,
                },
                Some(_) if ahead > 0 => Wait::BehindOthers { ahead },
                Some(reserved) => {
                    let used = allocated.get(role).copied().unwrap_or_default();
                    let free = reserved.sub(used);
                    if q.need.fits_free(*reserved, used) {
                        Wait::HostFull {
                            free: host.sub(host_used),
                        }
                    } else {
                        Wait::RoleFull { free }
                    }
                }
            };
            if !matches!(
                why,
                Wait::LargerThanReservation { .. } | Wait::NoReservation
            ) {
                ahead += 1;
            }
            decision.waiting.insert(q.key.clone(), why);
        }
    }
    decision
}

/// The units of `role` to preempt so that what is left fits `reserved`:
/// lowest priority first, then most recently started. CPU of elastic units
/// (shares) does not count: the role's quota throttles them instead.
pub fn preempt(running: &[Running], role: &str, reserved: Amount) -> Vec<String> {
    let mut mine: Vec<&Running> = running.iter().filter(|r| r.role == role).collect();
    let rigid = |r: &Running| Amount {
        cpus: if r.elastic_cpu { 0.0 } else { r.holds.cpus },
        ..r.holds
    };
    let mut held = mine.iter().fold(Amount::default(), |a, r| a.add(rigid(r)));
    mine.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.started_seq.cmp(&a.started_seq))
    });
    let mut victims = Vec::new();
    for r in mine {
        if held.fits(reserved) {
            break;
        }
        // Only units that free some of a resource in excess are taken.
        let frees = rigid(r);
        let helps = (held.cpus > reserved.cpus + EPS && frees.cpus > 0.0)
            || (held.mem_mb > reserved.mem_mb + EPS && frees.mem_mb > 0.0)
            || (reserved.disk_mb > 0.0
                && held.disk_mb > reserved.disk_mb + EPS
                && frees.disk_mb > 0.0);
        if !helps {
            continue;
        }
        held = held.sub(frees);
        victims.push(r.key.clone());
    }
    victims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(cpus: f64, mem_mb: f64) -> Amount {
        Amount {
            cpus,
            mem_mb,
            disk_mb: 0.0,
        }
    }
    fn q(key: &str, role: &str, priority: i32, seq: u64, cpus: f64, mem: f64) -> Queued {
        Queued {
            key: key.into(),
            role: role.into(),
            priority,
            seq,
            need: amt(cpus, mem),
        }
    }
    fn r(key: &str, role: &str, priority: i32, started_seq: u64, cpus: f64, mem: f64) -> Running {
        Running {
            key: key.into(),
            role: role.into(),
            priority,
            started_seq,
            holds: amt(cpus, mem),
            elastic_cpu: false,
        }
    }
    fn res(list: &[(&str, f64, f64)]) -> BTreeMap<String, Amount> {
        list.iter()
            .map(|(k, c, m)| (k.to_string(), amt(*c, *m)))
            .collect()
    }
    const HOST: Amount = Amount {
        cpus: 8.0,
        mem_mb: 8192.0,
        disk_mb: 0.0,
    };

    #[test]
    fn fills_a_reservation_then_queues() {
        let queue = [
            q("a", "batch", 0, 1, 0.5, 64.0),
            q("b", "batch", 0, 2, 0.5, 64.0),
            q("c", "batch", 0, 3, 0.5, 64.0),
        ];
        let d = admit(&queue, &[], &res(&[("batch", 1.0, 256.0)]), HOST);
        assert_eq!(d.start, ["a", "b"]);
        assert!(
            matches!(d.waiting["c"], Wait::RoleFull { .. }),
            "{:?}",
            d.waiting
        );
    }

    #[test]
    fn priority_then_submission_order() {
        let queue = [
            q("low", "batch", 0, 1, 1.0, 10.0),
            q("high", "batch", 5, 2, 1.0, 10.0),
            q("high2", "batch", 5, 3, 1.0, 10.0),
        ];
        let d = admit(&queue, &[], &res(&[("batch", 2.0, 100.0)]), HOST);
        assert_eq!(d.start, ["high", "high2"]);
        assert_eq!(
            d.waiting["low"],
            Wait::RoleFull {
                free: amt(0.0, 80.0)
            }
        );
    }

    #[test]
    fn head_of_queue_blocks_smaller_ones_behind_it() {
        let running = [r("x", "batch", 0, 1, 1.5, 10.0)];
        let queue = [
            q("big", "batch", 0, 1, 1.0, 10.0),
            q("small", "batch", 0, 2, 0.25, 10.0),
        ];
        let d = admit(&queue, &running, &res(&[("batch", 2.0, 100.0)]), HOST);
        assert!(d.start.is_empty());
        assert_eq!(d.waiting["small"], Wait::BehindOthers { ahead: 1 });
    }

    #[test]
    fn a_unit_larger_than_the_reservation_waits_aside() {
        let queue = [
            q("huge", "batch", 9, 1, 64.0, 10.0),
            q("ok", "batch", 0, 2, 0.5, 10.0),
        ];
        let d = admit(&queue, &[], &res(&[("batch", 1.0, 100.0)]), HOST);
        assert_eq!(d.start, ["ok"]);
        assert!(matches!(
            d.waiting["huge"],
            Wait::LargerThanReservation { .. }
        ));
        assert!(d.waiting["huge"].to_string().contains("whole reservation"));
    }

    #[test]
    fn roles_without_reservation_wait() {
        let d = admit(
            &[q("a", "ghost", 0, 1, 0.1, 10.0)],
            &[],
            &res(&[("batch", 1.0, 100.0)]),
            HOST,
        );
        assert!(d.start.is_empty());
        assert_eq!(d.waiting["a"], Wait::NoReservation);
    }

    #[test]
    fn host_capacity_bounds_overlapping_reservations() {
        let host = amt(2.0, 1000.0);
        let queue = [q("a", "r1", 0, 1, 1.5, 10.0), q("b", "r2", 0, 2, 1.5, 10.0)];
        let d = admit(
            &queue,
            &[],
            &res(&[("r1", 2.0, 1000.0), ("r2", 2.0, 1000.0)]),
            host,
        );
        assert_eq!(d.start.len(), 1);
        let waiting = d.waiting.values().next().unwrap();
        assert!(matches!(waiting, Wait::HostFull { .. }), "{waiting:?}");
    }

    #[test]
    fn fair_share_goes_to_the_role_with_the_lowest_dominant_share() {
        // r1 already holds half the host's memory: r2 goes first, then they alternate.
        let running = [r("x", "r1", 0, 1, 0.5, 4096.0)];
        let queue = [
            q("r1-a", "r1", 0, 1, 1.0, 100.0),
            q("r1-b", "r1", 0, 2, 1.0, 100.0),
            q("r2-a", "r2", 0, 3, 1.0, 100.0),
            q("r2-b", "r2", 0, 4, 1.0, 100.0),
        ];
        let reservations = res(&[("r1", 8.0, 8192.0), ("r2", 8.0, 8192.0)]);
        let d = admit(&queue, &running, &reservations, amt(3.5, 8192.0));
        assert_eq!(d.start, ["r2-a", "r2-b", "r1-a"]);
    }

    #[test]
    fn preempts_lowest_priority_then_most_recent() {
        let running = [
            r("old-low", "batch", 0, 1, 0.5, 10.0),
            r("new-low", "batch", 0, 2, 0.5, 10.0),
            r("high", "batch", 5, 3, 0.5, 10.0),
            r("other", "svc", 0, 4, 4.0, 10.0),
        ];
        assert_eq!(preempt(&running, "batch", amt(1.0, 100.0)), ["new-low"]);
        assert_eq!(
            preempt(&running, "batch", amt(0.5, 100.0)),
            ["new-low", "old-low"]
        );
        assert_eq!(
            preempt(&running, "batch", amt(0.0, 0.0)),
            ["new-low", "old-low", "high"]
        );
        assert!(preempt(&running, "batch", amt(2.0, 100.0)).is_empty());
        // Memory alone can force it too.
        assert_eq!(preempt(&running, "batch", amt(8.0, 25.0)), ["new-low"]);
    }

    #[test]
    fn elastic_tasks_are_throttled_not_preempted_for_cpu() {
        let mut soft = r("soft", "batch", 0, 2, 1.0, 10.0);
        soft.elastic_cpu = true;
        let running = [r("hard", "batch", 0, 1, 1.0, 10.0), soft];
        assert_eq!(preempt(&running, "batch", amt(0.5, 100.0)), ["hard"]);
        // Memory still counts for everyone.
        assert_eq!(preempt(&running, "batch", amt(8.0, 15.0)), ["soft"]);
    }

    #[test]
    fn float_sums_do_not_block_an_exact_fit() {
        let queue: Vec<Queued> = (0..10)
            .map(|i| q(&format!("t{i}"), "b", 0, i, 0.1, 10.0))
            .collect();
        let d = admit(&queue, &[], &res(&[("b", 1.0, 100.0)]), HOST);
        assert_eq!(d.start.len(), 10);
    }

    /// Issue 21: free disk of 0 or below used to read as "no disk limit".
    #[test]
    fn a_role_whose_disk_is_used_up_admits_no_more_disk() {
        let disk = |cpus, mem, disk_mb| Amount {
            cpus,
            mem_mb: mem,
            disk_mb,
        };
        let reserved: BTreeMap<String, Amount> =
            [("b".to_string(), disk(8.0, 8192.0, 1000.0))].into();
        let mut queued = q("more", "b", 0, 2, 0.1, 10.0);
        queued.need.disk_mb = 10.0;
        for held in [1000.0, 1200.0] {
            let mut full = r("full", "b", 0, 1, 0.1, 10.0);
            full.holds.disk_mb = held;
            let d = admit(&[queued.clone()], &[full], &reserved, HOST);
            assert!(d.start.is_empty(), "admitted with {held} MB of 1000 held");
            assert!(matches!(d.waiting["more"], Wait::RoleFull { .. }));
        }
        // With room it starts; with no disk reservation disk is not counted.
        let mut some = r("some", "b", 0, 1, 0.1, 10.0);
        some.holds.disk_mb = 990.0;
        assert_eq!(
            admit(&[queued.clone()], &[some.clone()], &reserved, HOST).start,
            ["more"]
        );
        some.holds.disk_mb = 5000.0;
        let no_disk = res(&[("b", 8.0, 8192.0)]);
        assert_eq!(admit(&[queued], &[some], &no_disk, HOST).start, ["more"]);
    }
}
