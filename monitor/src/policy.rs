//! The reservation policy. **Pure: no I/O, no clock** (time comes in the
//! observations), so it is unit-tested on recorded sample sequences.
//!
//! harvestable = total x (1 - margin) - business use, per resource; under
//! business pressure (PSI above the threshold) a further share is given
//! back. Shrink at once when harvestable drops below the reservation; grow
//! only after harvestable has stayed higher for `grow_delay_s`, by at most
//! `grow_step`, restarting the delay after each step. Changes smaller than
//! the dead band are ignored (no churn on noise). Clamped to [min, max].

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amount {
    pub cpus: f64,
    pub mem_mb: f64,
}

impl Amount {
    /// Equal but for float noise (a sum, a unit conversion).
    pub fn same(&self, o: &Amount) -> bool {
        (self.cpus - o.cpus).abs() < 1e-6 && (self.mem_mb - o.mem_mb).abs() < 1e-3
    }
    fn get(&self, d: usize) -> f64 {
        if d == 0 {
            self.cpus
        } else {
            self.mem_mb
        }
    }
    fn set(&mut self, d: usize, v: f64) {
        if d == 0 {
            self.cpus = v
        } else {
            self.mem_mb = v
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Share of the host's CPUs kept free for business bursts.
    pub cpu_margin: f64,
    /// Share of the host's memory kept free for business growth.
    pub mem_margin: f64,
    pub min: Amount,
    /// Default: the host.
    pub max: Option<Amount>,
    /// How long memory's harvestable must stay higher before it grows.
    pub grow_delay_s: f64,
    /// The same for CPU: shorter, because between samples the kernel keeps
    /// the business first anyway (gleaner's root is SCHED_IDLE / lowest
    /// weight), while nothing guards memory but the reservation.
    pub cpu_grow_delay_s: f64,
    pub grow_step: Amount,
    /// PSI `some avg10` (%) of CPU or memory above which the business is
    /// considered under pressure.
    pub psi_threshold: f64,
    /// Share of the harvestable amount given back under pressure.
    pub psi_shrink: f64,
    /// PSI is host-wide (v1 has no per-cgroup PSI): it counts as the
    /// business's pressure only when the business uses at least this share
    /// of the resource; below it, the stalls are the batch's own.
    pub psi_min_business_share: f64,
    /// Let host-wide CPU PSI shrink the harvest too. Off by default: the
    /// stall counts gleaner's own runnable tasks, and with a SCHED_IDLE
    /// root the batch cannot delay the business, so shrinking would give
    /// nothing back (measured: it halved the harvest next to a business
    /// using half the host). Worth turning on for the cpu.shares fallback.
    pub cpu_psi: bool,
    /// Changes smaller than this are not made.
    pub deadband: Amount,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            cpu_margin: 0.10,
            mem_margin: 0.10,
            min: Amount {
                cpus: 0.0,
                mem_mb: 0.0,
            },
            max: None,
            grow_delay_s: 30.0,
            cpu_grow_delay_s: 2.0,
            grow_step: Amount {
                cpus: 0.5,
                mem_mb: 1024.0,
            },
            psi_threshold: 10.0,
            psi_shrink: 0.5,
            psi_min_business_share: 0.25,
            cpu_psi: false,
            deadband: Amount {
                cpus: 0.05,
                mem_mb: 64.0,
            },
        }
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), String> {
        let frac = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: must be in [0, 1), got {v}"))
            }
        };
        frac("cpu_margin", self.cpu_margin)?;
        frac("mem_margin", self.mem_margin)?;
        frac("psi_shrink", self.psi_shrink)?;
        frac("psi_min_business_share", self.psi_min_business_share)?;
        let nonneg = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("{name}: must be a finite number >= 0, got {v}"))
            }
        };
        for (n, v) in [
            ("min.cpus", self.min.cpus),
            ("min.mem_mb", self.min.mem_mb),
            ("grow_delay_s", self.grow_delay_s),
            ("cpu_grow_delay_s", self.cpu_grow_delay_s),
            ("grow_step.cpus", self.grow_step.cpus),
            ("grow_step.mem_mb", self.grow_step.mem_mb),
            ("psi_threshold", self.psi_threshold),
            ("deadband.cpus", self.deadband.cpus),
            ("deadband.mem_mb", self.deadband.mem_mb),
        ] {
            nonneg(n, v)?;
        }
        if let Some(max) = self.max {
            if max.cpus < self.min.cpus || max.mem_mb < self.min.mem_mb {
                return Err("max: must be >= min".into());
            }
        }
        Ok(())
    }
}

/// One sample, as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Seconds since any fixed point.
    pub t_s: f64,
    pub total: Amount,
    /// Host use minus gleaner's own.
    pub business: Amount,
    pub psi_cpu: Option<f64>,
    pub psi_mem: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    current: Amount,
    /// Per resource: since when harvestable has stayed above the reservation.
    above_since: [Option<f64>; 2],
}

impl Policy {
    pub fn new(cfg: PolicyConfig, current: Amount) -> Self {
        Policy {
            cfg,
            current,
            above_since: [None, None],
        }
    }

    pub fn current(&self) -> Amount {
        self.current
    }

    /// What the agent applied (it caps at the host's total, which it may
    /// count a hair differently): the policy goes on from there, its grow
    /// timers kept.
    pub fn applied(&mut self, a: Amount) {
        self.current = a;
    }

    /// What could be given to batch work now.
    pub fn harvestable(&self, obs: &Observation) -> Amount {
        let mut h = Amount {
            cpus: obs.total.cpus * (1.0 - self.cfg.cpu_margin) - obs.business.cpus,
            mem_mb: obs.total.mem_mb * (1.0 - self.cfg.mem_margin) - obs.business.mem_mb,
        };
        let pressed = |p: Option<f64>, used: f64, total: f64| {
            p.is_some_and(|v| v > self.cfg.psi_threshold)
                && used >= total * self.cfg.psi_min_business_share
        };
        if self.cfg.cpu_psi && pressed(obs.psi_cpu, obs.business.cpus, obs.total.cpus) {
            h.cpus *= 1.0 - self.cfg.psi_shrink;
        }
        if pressed(obs.psi_mem, obs.business.mem_mb, obs.total.mem_mb) {
            h.mem_mb *= 1.0 - self.cfg.psi_shrink;
        }
        let max = self.cfg.max.unwrap_or(obs.total);
        Amount {
            cpus: h
                .cpus
                .clamp(self.cfg.min.cpus, max.cpus.max(self.cfg.min.cpus)),
            mem_mb: h
                .mem_mb
                .clamp(self.cfg.min.mem_mb, max.mem_mb.max(self.cfg.min.mem_mb)),
        }
    }

    /// The new reservation, when it should change.
    pub fn decide(&mut self, obs: &Observation) -> Option<Amount> {
        let target = self.harvestable(obs);
        let mut next = self.current;
        for d in 0..2 {
            let (cur, want, band) = (self.current.get(d), target.get(d), self.cfg.deadband.get(d));
            if want < cur - band {
                next.set(d, want);
                self.above_since[d] = None;
            } else if want > cur + band {
                let since = *self.above_since[d].get_or_insert(obs.t_s);
                let delay = if d == 0 {
                    self.cfg.cpu_grow_delay_s
                } else {
                    self.cfg.grow_delay_s
                };
                if obs.t_s - since >= delay {
                    next.set(d, want.min(cur + self.cfg.grow_step.get(d)));
                    self.above_since[d] = Some(obs.t_s);
                }
            } else {
                self.above_since[d] = None;
            }
        }
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Amount = Amount {
        cpus: 8.0,
        mem_mb: 16384.0,
    };

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            grow_delay_s: 10.0,
            cpu_grow_delay_s: 10.0,
            ..PolicyConfig::default()
        }
    }

    fn obs(t: f64, cpus: f64, mem: f64) -> Observation {
        Observation {
            t_s: t,
            total: HOST,
            business: Amount { cpus, mem_mb: mem },
            psi_cpu: None,
            psi_mem: None,
        }
    }

    /// Runs a recorded sequence; returns the reservation after each sample.
    fn run(policy: &mut Policy, samples: &[Observation]) -> Vec<Amount> {
        samples
            .iter()
            .map(|o| {
                policy.decide(o);
                policy.current()
            })
            .collect()
    }

    #[test]
    fn harvestable_is_total_less_margin_less_business() {
        let p = Policy::new(cfg(), HOST);
        let h = p.harvestable(&obs(0.0, 2.0, 4096.0));
        assert!((h.cpus - (8.0 * 0.9 - 2.0)).abs() < 1e-9);
        assert!((h.mem_mb - (16384.0 * 0.9 - 4096.0)).abs() < 1e-9);
        // Never below min, never above the host.
        assert_eq!(
            p.harvestable(&obs(0.0, 100.0, 1e9)),
            Amount {
                cpus: 0.0,
                mem_mb: 0.0
            }
        );
        let idle = Policy::new(
            PolicyConfig {
                cpu_margin: 0.0,
                mem_margin: 0.0,
                ..cfg()
            },
            HOST,
        );
        assert_eq!(idle.harvestable(&obs(0.0, -1.0, -1.0)), HOST);
    }

    #[test]
    fn a_spike_shrinks_at_once_and_growth_waits_for_the_delay() {
        let mut p = Policy::new(
            cfg(),
            Amount {
                cpus: 7.2,
                mem_mb: 8192.0,
            },
        );
        let mut seq = vec![obs(0.0, 0.0, 0.0), obs(1.0, 6.0, 0.0)]; // spike at t=1
        seq.extend((2..30).map(|t| obs(t as f64, 0.0, 0.0))); // gone again
        let r = run(&mut p, &seq);
        assert!(
            (r[1].cpus - 1.2).abs() < 1e-9,
            "shrunk in the same sample: {:?}",
            r[1]
        );
        // Above again from t=2: stays down until 10 s later (t=12), then
        // steps of 0.5 every 10 s.
        assert!((r[11].cpus - 1.2).abs() < 1e-9, "{:?}", r[11]);
        assert!((r[12].cpus - 1.7).abs() < 1e-9, "{:?}", r[12]);
        assert!((r[21].cpus - 1.7).abs() < 1e-9, "{:?}", r[21]);
        assert!((r[22].cpus - 2.2).abs() < 1e-9, "{:?}", r[22]);
        // Memory, never short of room, grew by its own steps meanwhile.
        assert!(r[10].mem_mb > 8192.0);
    }

    #[test]
    fn cpu_regrows_sooner_than_memory() {
        let c = PolicyConfig {
            grow_delay_s: 30.0,
            cpu_grow_delay_s: 2.0,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(
            c,
            Amount {
                cpus: 1.0,
                mem_mb: 1024.0,
            },
        );
        let r = run(
            &mut p,
            &(0..5).map(|t| obs(t as f64, 0.0, 0.0)).collect::<Vec<_>>(),
        );
        assert!(r[2].cpus > 1.0, "cpu grew after 2 s: {:?}", r[2]);
        assert_eq!(r[4].mem_mb, 1024.0, "memory waits its 30 s");
    }

    #[test]
    fn a_ramp_is_followed_down_sample_by_sample() {
        let mut p = Policy::new(
            cfg(),
            Amount {
                cpus: 7.2,
                mem_mb: 14745.6,
            },
        );
        let seq: Vec<_> = (0..8)
            .map(|t| obs(t as f64, t as f64 * 0.8, t as f64 * 1500.0))
            .collect();
        let r = run(&mut p, &seq);
        for (i, a) in r.iter().enumerate().skip(1) {
            assert!(
                (a.cpus - (7.2 - i as f64 * 0.8)).abs() < 1e-9,
                "sample {i}: {a:?}"
            );
            assert!(
                a.mem_mb <= 14745.6 - i as f64 * 1500.0 + 1e-6,
                "sample {i}: {a:?}"
            );
        }
    }

    #[test]
    fn noise_within_the_dead_band_changes_nothing() {
        let mut p = Policy::new(
            cfg(),
            Amount {
                cpus: 6.2,
                mem_mb: 10000.0,
            },
        );
        let noise = [0.98, 1.03, 1.0, 0.97, 1.02, 1.01, 0.99];
        let mut changes = 0;
        for (i, n) in noise.iter().cycle().take(200).enumerate() {
            let mem = 16384.0 * 0.9 - 10000.0 + (i % 3) as f64 * 20.0;
            if p.decide(&obs(i as f64, *n, mem)).is_some() {
                changes += 1;
            }
        }
        assert_eq!(changes, 0);
    }

    #[test]
    fn steady_load_settles_without_oscillating() {
        let mut p = Policy::new(
            cfg(),
            Amount {
                cpus: 0.5,
                mem_mb: 1024.0,
            },
        );
        let seq: Vec<_> = (0..300).map(|t| obs(t as f64, 3.0, 2048.0)).collect();
        let r = run(&mut p, &seq);
        let last = r[r.len() - 1];
        assert!((last.cpus - (7.2 - 3.0)).abs() < 1e-9, "{last:?}");
        // Monotone growth: never a shrink on steady load.
        assert!(r
            .windows(2)
            .all(|w| w[1].cpus >= w[0].cpus && w[1].mem_mb >= w[0].mem_mb));
    }

    #[test]
    fn business_pressure_gives_back_more() {
        let pressure = Observation {
            psi_cpu: Some(25.0),
            psi_mem: Some(25.0),
            ..obs(0.0, 2.0, 8192.0)
        };
        let p = Policy::new(cfg(), HOST);
        let calm = p.harvestable(&obs(0.0, 2.0, 8192.0));
        let pressed = p.harvestable(&pressure);
        // Memory pressure counts; CPU pressure only when asked for (the
        // default cannot tell the batch's stalls from the business's).
        assert!((pressed.mem_mb - calm.mem_mb * 0.5).abs() < 1e-9);
        assert_eq!(pressed.cpus, calm.cpus);
        let p = Policy::new(
            PolicyConfig {
                cpu_psi: true,
                ..cfg()
            },
            HOST,
        );
        assert!((p.harvestable(&pressure).cpus - calm.cpus * 0.5).abs() < 1e-9);
    }

    #[test]
    fn pressure_with_an_idle_business_is_the_batch_own() {
        // Host-wide PSI also counts the batch's stalls: with the business
        // below psi_min_business_share, it is not business pressure.
        let p = Policy::new(
            PolicyConfig {
                cpu_psi: true,
                ..cfg()
            },
            HOST,
        );
        let calm = p.harvestable(&obs(0.0, 0.1, 100.0));
        let stalls = p.harvestable(&Observation {
            psi_cpu: Some(80.0),
            psi_mem: Some(50.0),
            ..obs(0.0, 0.1, 100.0)
        });
        assert_eq!(calm, stalls);
    }

    #[test]
    fn bad_config_is_named() {
        let bad = PolicyConfig {
            cpu_margin: 1.5,
            ..cfg()
        };
        assert!(bad.validate().unwrap_err().starts_with("cpu_margin"));
        let bad = PolicyConfig {
            min: Amount {
                cpus: 2.0,
                mem_mb: 0.0,
            },
            max: Some(Amount {
                cpus: 1.0,
                mem_mb: 10.0,
            }),
            ..cfg()
        };
        assert!(bad.validate().unwrap_err().starts_with("max"));
        assert!(cfg().validate().is_ok());
    }
}
