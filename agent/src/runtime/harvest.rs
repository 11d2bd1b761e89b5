//! Fleet mode: the node's harvest ring, `harvest/<node>` (FLEET.md), for
//! the web console's charts: every [`SAMPLE_EVERY_S`] the host's business
//! use and batch use (the monitor's sampler, reused: the same numbers the
//! monitor decides on) and the reservation now in force; the ring is
//! written under the node's lease every [`WRITE_EVERY_S`], so its size and
//! the etcd write rate stay bounded.

use std::time::{Duration, Instant};

use gleaner_core::harvest::{HarvestRing, SAMPLE_EVERY_S, WRITE_EVERY_S};
use gleaner_monitor::sample::Sampler;

use super::Agent;

pub const SAMPLE_EVERY: Duration = Duration::from_secs(SAMPLE_EVERY_S);
const WRITE_EVERY: Duration = Duration::from_secs(WRITE_EVERY_S);
/// Samples written one by one after the agent starts.
const EAGER_SAMPLES: usize = 4;

pub struct Harvester {
    sampler: Option<Sampler>,
    ring: HarvestRing,
    written: Option<Instant>,
    warned: bool,
}

impl Harvester {
    pub fn new(node: &str) -> Harvester {
        Harvester {
            sampler: None,
            ring: HarvestRing::new(node),
            written: None,
            warned: false,
        }
    }

    /// Takes one sample; returns the ring's JSON when a write is due.
    pub fn tick(&mut self, agent: &Agent, now: Instant) -> Option<String> {
        let sampler = self
            .sampler
            .get_or_insert_with(|| Sampler::new(agent.cgroups().root_name()));
        match sampler.sample(false) {
            Ok(Some(s)) => {
                let (mut cpus, mut mem) = (0.0, 0.0);
                for u in agent.reservations().values() {
                    cpus += u.reserved.cpus;
                    mem += u.reserved.mem_mb;
                }
                self.ring.push([
                    chrono::Utc::now().timestamp() as f64,
                    cpus,
                    mem,
                    s.agent_cpus,
                    s.agent_mem_mb,
                    s.business_cpus(),
                    s.business_mem_mb(),
                ]);
            }
            // The first reading (rates need two).
            Ok(None) => return None,
            Err(e) => {
                if !self.warned {
                    tracing::warn!(
                        "harvest sample: {e}; the console's chart has no data from this node"
                    );
                    self.warned = true;
                }
                return None;
            }
        }
        // Every sample while the ring is short (a new node's chart fills in
        // its first minute), then every WRITE_EVERY.
        let due = self.ring.samples.len() <= EAGER_SAMPLES
            || self
                .written
                .is_none_or(|w| now.duration_since(w) >= WRITE_EVERY);
        if !due {
            return None;
        }
        self.written = Some(now);
        Some(serde_json::to_string(&self.ring).unwrap_or_default())
    }

    /// A new session's lease: the next sample is written at once.
    pub fn rewrite_soon(&mut self) {
        self.written = None;
    }
}
