//! Issue 14: host ports from the node's `port_range`: `ports` 0 get free
//! ports, given as PORT0..n / PORT / PORTS / HOST; never two live tasks
//! with one port; released when the task ends.

mod common;

use std::time::Duration;

use common::*;
use gleaner_agent::client::ClientError;
use serde_json::json;

#[test]
fn ports_are_given_once_published_in_env_and_released_at_the_end() {
    if !require_root("ports_are_given_once_published_in_env_and_released_at_the_end") {
        return;
    }
    let agent = TestAgent::start_with("port_range = [40000, 40002]\n");
    let mut a = spec("echo \"ports $PORT0 $PORT1 $PORT $PORTS $HOST\"; sleep 100");
    a["ports"] = json!([0, 0]);
    let st = agent.submit(a).unwrap();
    assert_eq!(st.ports, vec![40000, 40001]);
    agent.wait_output(&st.id, "ports 40000 40001 40000 40000,40001 ");
    // Exhausted, taken, out of range: refused with the reason, nothing made.
    for (want, reason) in [
        (json!([0, 0]), "no free port"),
        (json!([40001]), "already in use"),
        (json!([80]), "outside"),
    ] {
        let mut b = spec("sleep 100");
        b["ports"] = want.clone();
        match agent.submit(b) {
            Err(ClientError::Api { status, message }) => {
                assert_eq!(status, 400, "{message}");
                assert!(message.contains(reason), "{want}: {message}");
            }
            other => panic!("{want} accepted: {other:?}"),
        }
    }
    let mut c = spec("sleep 100");
    c["ports"] = json!([0]);
    let c = agent.submit(c).unwrap();
    assert_eq!(c.ports, vec![40002]);
    // The first ends: its ports are free again.
    agent.kill(&st.id);
    agent.wait_final(&st.id, Duration::from_secs(20));
    let mut d = spec("sleep 100");
    d["ports"] = json!([0, 40000]);
    let d = agent.submit(d).unwrap();
    assert_eq!(d.ports, vec![40001, 40000]);
    agent.kill(&c.id);
    agent.kill(&d.id);
}
