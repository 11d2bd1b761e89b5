//! gleaner-scheduler: places work across the fleet through etcd (FLEET.md).
//!
//! * [`leader`]: election on `<prefix>/scheduler/leader`, the leader's view
//!   (rebuilt from etcd each term, kept by a watch) and its pass loop.
//! * [`pass`]: one pass: move work ([`reconcile`], pure), remove stale
//!   placements, place ([`gleaner_core::placement`], pure), write.
//! * [`api`]: the native API, served by every replica from etcd.
//! * [`marathon`]: Marathon's REST API and the leader's app controller.
//! * [`ui`]: the web console at `/ui/`.
//!
//! No state here that etcd does not hold: any replica can die and another
//! takes over from etcd.

pub mod api;
pub mod config;
pub mod leader;
pub mod marathon;
pub mod metrics;
pub mod pass;
pub mod reconcile;
pub mod store;
pub mod ui;
pub mod view;
