//! gleaner-core: the pure decision code and wire types that more than one
//! gleaner program needs (agent, scheduler, CLI). No I/O, no async runtime:
//! everything here is unit-tested without root, etcd or a network.
//!
//! * [`spec`]: TaskSpec and its validation.
//! * [`fetch`]: a TaskSpec's downloads into the sandbox, named and checked.
//! * [`egress`]: where the agent's downloads may connect (no loopback,
//!   link-local, the agent's own API unless allowed).
//! * [`status`]: task states, TaskStatus, restart and backoff rules.
//! * [`health`]: health checks asked and their results, Marathon's rules.
//! * [`constraints`]: Marathon-style constraints, parsed and checked.
//! * [`auth`]: callers (admin, task-scoped token) and what each may do.
//! * [`app_token`]: Marathon app instances' scoped tokens and their rule.
//! * [`admission`]: one node's admission order (DRF across roles, priority
//!   within) and preemption on shrink.
//! * [`group`]: task groups as pods: shared path, group network, sidecars.
//! * [`fleet`]: the fleet's etcd key layout and the JSON stored there.
//! * [`gang`]: a fleet gang placed on a node is a task group there.
//! * [`placement`]: fleet placement (fair share, fit, gangs), pure.
//! * `serve` (feature `serve`, the one module with I/O): the HTTP/1
//!   listener of the agent and the scheduler, with its limits against
//!   hostile clients.

pub mod admission;
pub mod app_token;
pub mod auth;
pub mod constraints;
pub mod egress;
pub mod fetch;
pub mod fleet;
pub mod gang;
pub mod group;
pub mod harvest;
pub mod health;
pub mod placement;
#[cfg(feature = "serve")]
pub mod serve;
pub mod spec;
pub mod status;
