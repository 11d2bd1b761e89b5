//! gleaner-agent: runs batch tasks on the idle capacity of legacy hosts.
//!
//! See ARCHITECTURE.md for the bird's-eye view. Entry points: [`runtime::Agent`]
//! (the task manager), [`api::router`] (HTTP), [`supervisor::main`] (the
//! per-task supervisor mode of the same binary).

pub mod api;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod constraints;
pub mod fleet;
pub mod fsutil;
pub mod images;
pub mod layout;
pub mod metrics;
pub mod procfs_util;
pub mod runtime;
pub mod scheduler;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod userdb;
