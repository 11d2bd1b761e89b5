//! Issue 22, the fleet side: a gang placed on one node is a task group
//! there (a pod). Real etcd, real schedulers and agents as processes, real
//! tasks in a busybox rootfs. Root only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn wait_job(fleet: &Fleet, id: &str, states: &[&str]) -> Value {
    let mut last = Value::Null;
    wait_until(LONG, &format!("job {id} in {states:?}"), || {
        last = job(fleet, id);
        states.iter().any(|s| last["state"] == *s)
    });
    last
}

fn stdout_of(agent: &FleetAgent, task: &str) -> String {
    std::fs::read_to_string(agent.data_dir.join("tasks").join(task).join("stdout"))
        .unwrap_or_default()
}

fn member(cmd: &str, sidecar: bool, gang: &Value, cardinality: u32) -> Value {
    let mut g = gang.clone();
    g["cardinality"] = json!(cardinality);
    json!({"spec": {"cmd": cmd, "sidecar": sidecar, "kill_grace_s": 1,
                    "resources": {"cpus": 0.5, "mem_mb": 16}},
           "gang": g, "max_retries": 0})
}

/// Placement keys under `placements/`: (node, task) → value.
fn placements(fleet: &Fleet) -> BTreeMap<(String, String), Value> {
    fleet
        .etcd
        .get_prefix("/gleaner/placements/")
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("/gleaner/placements/")?;
            let (node, task) = rest.split_once('/')?;
            Some(((node.to_owned(), task.to_owned()), v))
        })
        .collect()
}

#[test]
fn a_gang_on_one_node_shares_a_volume_and_localhost_and_its_sidecar_succeeds() {
    if !require_root("a_gang_on_one_node_shares_a_volume_and_localhost_and_its_sidecar_succeeds") {
        return;
    }
    let Some(fleet) = fleet(&agents(&["n1"], 2.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    // A listener on the host's loopback: out of the group's reach.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let host_port = host.local_addr().unwrap().port();
    let main = format!(
        "echo hello > /shared/x; until [ -s /sandbox/got ]; do busybox nc -l -p 7000 > /sandbox/got; done; \
         busybox touch /shared/ack; cat /sandbox/got; \
         busybox nc -w 2 127.0.0.1 {host_port} </dev/null && echo REACHED-HOST; echo DONE"
    );
    let side = "while [ ! -s /shared/x ]; do sleep 0.1; done; read v < /shared/x; \
                until [ -f /shared/ack ]; do echo got-$v | busybox nc -w 1 127.0.0.1 7000; sleep 0.2; done; \
                echo SENT; sleep 1000";
    let gang = json!({"id": "pod1", "network": "group"});
    let ids = submit(
        &fleet,
        "q",
        vec![member(&main, false, &gang, 2), member(side, true, &gang, 2)],
    );
    let (main_task, side_task) = (format!("{}.1", ids[0]), format!("{}.1", ids[1]));
    let m = wait_job(&fleet, &ids[0], &["SUCCEEDED", "FAILED"]);
    let agent = fleet.agent("n1");
    let out = stdout_of(agent, &main_task);
    assert_eq!(m["state"], "SUCCEEDED", "{m}\n{out}\n{}", agent.log_tail());
    assert!(
        out.contains("got-hello"),
        "the sidecar read /shared and reached the main on localhost: {out}"
    );
    assert!(
        !out.contains("REACHED-HOST"),
        "the host's loopback is out of reach: {out}"
    );
    assert!(matches!(host.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));

    // One group on the agent, named after the first member of the unit
    // (ordered by priority, submission, job id: either one).
    let home = [&main_task, &side_task]
        .into_iter()
        .find(|t| matches!(agent.get(&format!("/v1/groups/{t}.pod")), Ok((200, _))))
        .expect("a group named after a member");
    let g = agent.get_json(&format!("/v1/groups/{home}.pod"));
    assert_eq!(
        (g["network"].as_str(), g["shared_path"].as_str()),
        (Some("group"), Some("/shared")),
        "{g}"
    );
    let members: BTreeSet<&str> = g["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([main_task.as_str(), side_task.as_str()])
    );

    // The sidecar is stopped when the main ends; its job succeeds, once.
    let s = wait_job(&fleet, &ids[1], &["SUCCEEDED", "FAILED", "CANCELLED"]);
    assert_eq!(s["state"], "SUCCEEDED", "{s}");
    assert_eq!(s["attempt"], 1, "never placed again: {s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or_default()
            .contains("main members"),
        "{s}"
    );
    // The group's volume and namespace go with it.
    let shared = agent.data_dir.join("tasks").join(home).join("shared");
    let ns = agent.data_dir.join("run/netns").join(home);
    wait_until(
        Duration::from_secs(15),
        "shared dir and netns removed",
        || !shared.exists() && !ns.exists(),
    );
}

#[test]
fn a_gang_split_over_two_agents_is_one_group_per_node() {
    if !require_root("a_gang_split_over_two_agents_is_one_group_per_node") {
        return;
    }
    // 1 cpu per node, 4 members of 0.5: two per node.
    let Some(fleet) = fleet(&agents(&["n1", "n2"], 1.0, |_| vec![]), "") else {
        return;
    };
    put_queue(&fleet, "q", 1.0);
    // Each member writes its name, waits for a second name, and lists what
    // it sees: its own node's pair, never the other node's.
    let cmd = "echo x > /data/pod/$GLEANER_TASK_ID; n=0; \
               while [ $(busybox ls /data/pod | busybox wc -l) -lt 2 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done; \
               sleep 2; busybox ls /data/pod";
    let gang = json!({"id": "split", "shared_path": "/data/pod"});
    let ids = submit(
        &fleet,
        "q",
        (0..4).map(|_| member(cmd, false, &gang, 4)).collect(),
    );
    // While they run: each node's placements carry one group, listing
    // exactly that node's members.
    let mut seen = BTreeMap::new();
    wait_until(LONG, "4 placements", || {
        seen = placements(&fleet);
        seen.len() == 4
    });
    let mut per_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((node, task), _) in &seen {
        per_node
            .entry(node.clone())
            .or_default()
            .insert(task.clone());
    }
    assert_eq!(per_node.len(), 2, "{per_node:?}");
    let mut group_ids = BTreeSet::new();
    for ((node, task), p) in &seen {
        let g = &p["group"];
        let members: BTreeSet<String> = serde_json::from_value(g["members"].clone()).unwrap();
        assert_eq!(&members, &per_node[node], "{task}: {p}");
        assert_eq!(g["gang"], "split");
        group_ids.insert(g["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(group_ids.len(), 2, "one group per node: {group_ids:?}");
    for id in &ids {
        let j = wait_job(&fleet, id, &["SUCCEEDED", "FAILED"]);
        assert_eq!(j["state"], "SUCCEEDED", "{j}");
    }
    for (node, tasks) in &per_node {
        let agent = fleet.agent(node);
        for task in tasks {
            let listed: BTreeSet<String> =
                stdout_of(agent, task).lines().map(str::to_owned).collect();
            assert_eq!(
                &listed, tasks,
                "{task} on {node} sees its node's members only"
            );
        }
        let gid = group_ids
            .iter()
            .find(|g| tasks.iter().any(|t| **g == format!("{t}.pod")))
            .unwrap();
        let g = agent.get_json(&format!("/v1/groups/{gid}"));
        assert_eq!(g["shared_path"], "/data/pod", "{g}");
        assert_eq!(g["state"], "FINISHED", "{g}");
    }
}
