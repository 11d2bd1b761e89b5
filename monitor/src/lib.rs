//! gleaner-monitor: measures the host, decides the batch reservation, and
//! moves it through the agent's HTTP API. `policy` is pure; `sample` reads
//! /proc and cgroup files (`delay`: the business's run-queue delay); `client` talks to the agent.

pub mod client;
pub mod config;
pub mod delay;
pub mod policy;
pub mod sample;
