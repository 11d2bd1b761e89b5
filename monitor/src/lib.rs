//! gleaner-monitor: measures the host, decides the batch reservation, and
//! moves it through the agent's HTTP API. `policy` is pure; `sample` reads
//! /proc and cgroup files; `client` talks to the agent.

pub mod client;
pub mod config;
pub mod policy;
pub mod sample;
