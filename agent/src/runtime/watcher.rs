//! Exit reports from supervisors (a datagram each) and the liveness sweep
//! that catches a supervisor that died without reporting.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{Agent, StartError};
use crate::fsutil::{self, FsError};

pub(super) fn bind(path: &Path) -> Result<UnixDatagram, StartError> {
    fsutil::remove_file_if_exists(path)?;
    let sock = UnixDatagram::bind(path).map_err(|e| FsError::io("bind", path, e))?;
    sock.set_nonblocking(true)
        .map_err(|e| FsError::io("nonblocking", path, e))?;
    Ok(sock)
}

pub(super) fn spawn(agent: Arc<Agent>, sock: UnixDatagram) {
    let reports = agent.clone();
    tokio::spawn(async move {
        let sock = match tokio::net::UnixDatagram::from_std(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("exit report socket: {e}");
                return;
            }
        };
        let mut buf = [0u8; 512];
        loop {
            let Ok(n) = sock.recv(&mut buf).await else {
                continue;
            };
            let msg = String::from_utf8_lossy(&buf[..n]);
            match parse_report(&msg) {
                Some((id, run)) => reports.on_exit(id, run),
                None => tracing::debug!("ignored report {msg:?}"),
            }
        }
    });
    let interval = Duration::from_secs_f64(agent.cfg.liveness_interval_s);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            agent.check_liveness();
        }
    });
}

fn parse_report(msg: &str) -> Option<(&str, u32)> {
    let mut f = msg.split_whitespace();
    match (f.next()?, f.next()?, f.next()?.parse().ok()?) {
        ("exit", id, run) => Some((id, run)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_reports() {
        assert_eq!(super::parse_report("exit t1 3"), Some(("t1", 3)));
        assert_eq!(super::parse_report("exit t1"), None);
        assert_eq!(super::parse_report("hello t1 3"), None);
    }
}
