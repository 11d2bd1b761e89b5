//! gleaner-agent: runs batch tasks on the idle capacity of legacy hosts.
//!
//! See ARCHITECTURE.md for the bird's-eye view. Entry points: [`runtime::Agent`]
//! (the task manager), [`api::router`] (HTTP), [`supervisor::main`] (the
//! per-task supervisor mode of the same binary).

pub mod api;

pub mod cgroup;
pub mod client;
pub mod config;
pub mod datalock;
pub mod download;
pub mod du;
pub mod egress_guard;
pub mod exec;
pub mod fleet;
pub mod fsutil;
pub mod images;
pub mod layout;
pub mod metrics;
pub mod ports;
pub mod procfs_util;
pub mod runtime;
pub mod safeopen;
pub mod supervisor;
pub mod tls;
pub mod userdb;
pub mod workdir;

// Pure logic shared with the scheduler and the CLI lives in gleaner-core;
// re-exported so `crate::spec::...` paths keep working.
pub use gleaner_core::admission as scheduler;
pub use gleaner_core::{auth, constraints, spec, status};
