//! Issue 17 on a real fleet: the web console in headless chromium against
//! a 3-member etcd, two scheduler replicas (no token: the console needs no
//! login) and two real agents publishing their info and harvest rings.
//! Root only. The node numbers are the agents', the sparklines are their
//! measured rings, and deleting an attribute drains a real task to the
//! other node while the job page watches.

mod common;
mod webdriver;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use webdriver::Browser;

fn num(x: f64) -> String {
    format!("{}", (x * 100.0).round() / 100.0)
}

#[test]
fn the_console_follows_a_real_fleet_and_a_drain() {
    if !require_root("the_console_follows_a_real_fleet_and_a_drain") {
        return;
    }
    let Some(b) = Browser::start(1280, 800) else {
        return;
    };
    let names = ["n1", "n2"];
    let Some(fleet) = fleet(&agents(&names, 2.0, |_| vec![]), "") else {
        return;
    };
    for n in names {
        fleet
            .etcd
            .put(&format!("/gleaner/nodes/{n}/attributes/ssd"), "true");
    }
    let url = fleet.any_scheduler().url.clone();
    b.goto(&format!("{url}/ui/#/fleet"));
    let js_text = |sel: &str| {
        b.js(&format!(
            "const e = document.querySelector({sel:?}); return e && e.textContent;"
        ))
    };
    // The agents' own numbers.
    wait_until(
        LONG,
        "both agents on the fleet page as /v1/nodes says",
        || {
            let (_, nodes) = fleet.any_scheduler().request("GET", "/v1/nodes", None);
            nodes.as_array().is_some_and(|a| a.len() == 2)
                && nodes.as_array().unwrap().iter().all(|n| {
                    let node = n["node"].as_str().unwrap();
                    let res = n["roles"]["batch"]["reserved"]["cpus"].as_f64().unwrap();
                    js_text(&format!(
                        "tr[data-node={node:?}] [data-role=batch] [data-k=reserved-cpus]"
                    )) == json!(num(res))
                        && js_text(&format!("tr[data-node={node:?}] [data-k=tasks]"))
                            == json!(n["tasks"].to_string())
                })
        },
    );
    // Their harvest rings (the first after ~15 s; the console reads them
    // every 15 s): a sparkline each.
    wait_until(Duration::from_secs(90), "a sparkline per agent", || {
        b.js("return document.querySelectorAll('svg.spark').length;") == json!(2)
    });

    wait_until(LONG, "both nodes report ssd", || {
        let (_, nodes) = fleet.any_scheduler().request("GET", "/v1/nodes", None);
        nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["attributes"]["ssd"] == "true"))
    });
    put_queue(&fleet, "q", 1.0);
    let id = submit(
        &fleet,
        "q",
        vec![sleeper(0.5, 600, json!([["ssd", "IS", "true"]]))],
    )
    .remove(0);
    b.goto(&format!("{url}/ui/#/jobs/{id}"));
    let first = b.wait_js(
        LONG,
        "the job running on a node",
        "const s = document.getElementById('job-state'); const n = document.getElementById('job-node');\
         return s && s.textContent === 'RUNNING' && n.textContent;",
    );
    let first = first.as_str().unwrap().to_owned();
    let j = job(&fleet, &id);
    assert_eq!(j["node"], json!(first), "the screen shows the API's node");
    let other = if first == "n1" { "n2" } else { "n1" };

    // Drain: the agent stops the task, the scheduler places it on the other.
    fleet
        .etcd
        .del(&format!("/gleaner/nodes/{first}/attributes/ssd"));
    b.wait_js(
        LONG,
        "the job page shows the task on the other node",
        &format!(
            "return document.getElementById('job-node').textContent === {other:?} \
             && document.getElementById('job-state').textContent === 'RUNNING';"
        ),
    );
    let seen = b.js("return document.getElementById('seen').textContent;");
    let seen = seen.as_str().unwrap().to_owned();
    assert!(
        seen.contains(&format!("on {first}")) && seen.contains(&format!("on {other}")),
        "{seen}"
    );
    let timeline: Value = b.js("return document.getElementById('timeline').textContent;");
    assert!(
        timeline
            .as_str()
            .unwrap()
            .contains(&format!("placed on {other}")),
        "{timeline}"
    );
    if std::env::var_os("CONSOLE_SCREENSHOTS").is_some() {
        b.goto(&format!("{url}/ui/#/fleet"));
        b.wait_js(
            LONG,
            "sparklines",
            "return document.querySelectorAll('svg.spark').length === 2;",
        );
        let png = b.screenshot_png();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::write(dir.join("console-real-fleet.png"), png).unwrap();
    }
    let errs: Vec<Value> = b
        .console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(errs.is_empty(), "console errors: {errs:?}");
}
