//! Hostile cases found in review of the scheduler and its Marathon API,
//! each against a real etcd and the real scheduler binary (tests/sim).
//! Every test here failed on the code before its fix.

mod sim;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim::*;

/// A native job carrying `MARATHON_APP_ID` in its env was taken for an
/// instance of that app by the leader's app controller: with no such app it
/// was cancelled ("app deleted") and then consumed (its record deleted),
/// so a job the API had accepted vanished. Such env is refused now.
#[test]
fn native_job_with_marathon_env_is_refused() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    for var in ["MARATHON_APP_ID", "MARATHON_APP_VERSION"] {
        let body = json!({"queue": "q", "jobs": [{"spec": {
            "cmd": "true", "resources": {"cpus": 1, "mem_mb": 64},
            "env": {var: "/ghost"}}}]});
        let (code, v) = s.call("POST", "/v1/jobs", Some(body));
        if code == 201 {
            // The old code: the job is accepted, then the controller
            // deletes it. Show that, so the failure says why.
            let id = v["jobs"][0].as_str().unwrap().to_owned();
            std::thread::sleep(Duration::from_secs(2));
            let (code, v) = s.call("GET", &format!("/v1/jobs/{id}"), None);
            panic!("{var}: job accepted, then GET says {code} {v}");
        }
        assert_eq!(code, 400, "{var}: {v}");
        assert!(v["error"].as_str().unwrap().contains(var), "{v}");
    }
    assert!(etcd.keys("/gleaner/jobs/").is_empty());
}

/// `instances` had no bound: one request for 100,000,000 instances made
/// the leader write a job per instance, 100 per transaction without end,
/// until etcd's quota (NOSPACE) stopped every write of the fleet.
#[test]
fn app_instances_are_bounded() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    let big = json!({"id": "/big", "cmd": "sleep 100", "cpus": 0.01, "mem": 4,
        "instances": 100_000_000u32});
    let (code, _, v) = s.call_full("POST", "/v2/apps", Some(&big.to_string()));
    if code == 201 {
        std::thread::sleep(Duration::from_secs(2));
        let n = etcd.keys("/gleaner/jobs/").len();
        panic!("accepted; {n} jobs written in 2 s");
    }
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["details"][0]["path"], "/instances", "{v}");
    // A scale through PUT is held to the same bound.
    let ok = json!({"id": "/ok", "cmd": "sleep 100", "instances": 0});
    assert_eq!(
        s.call_full("POST", "/v2/apps", Some(&ok.to_string())).0,
        201
    );
    let (code, _, v) = s.call_full(
        "PUT",
        "/v2/apps/ok?force=true",
        Some(&json!({"instances": 100_000_000u32}).to_string()),
    );
    assert_eq!(code, 422, "{v}");
    assert!(etcd.keys("/gleaner/jobs/").is_empty());
}

/// SSE clients that never read: each one's etcd watch shared the API's
/// etcd connection, and the watch was read only as fast as the client
/// read. Unread watch data holds HTTP/2 flow-control window, so a few
/// stalled clients starved the connection and every API request of that
/// replica hung until etcd's request timeout (503). A stalled client is
/// now dropped once it is far behind, and its watch with it.
#[test]
fn sse_clients_that_never_read_do_not_stall_the_api() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    let addr = s.url.trim_start_matches("http://").to_owned();
    // Stalled subscribers: they send the request and never read.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "GET /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            s.token
        )
        .unwrap();
        stalled.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    // Events with big bodies: app definitions written (api_post_event
    // carries the whole definition), ~0.9 MB each, 24 MB in all.
    let env: serde_json::Map<String, Value> = (0..900)
        .map(|i| (format!("K{i}"), json!("x".repeat(1000))))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..24 {
        let app = json!({"id": format!("/big{i}"), "cmd": "true", "instances": 0, "env": env});
        let file = dir.path().join("v");
        std::fs::write(&file, app.to_string()).unwrap();
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint, "--command-timeout=5s"])
            .args(["put", &format!("/gleaner/apps/big{i}")])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // Gone again at once: only the events matter (the leader's pass
        // would read them all otherwise).
        etcd.del(&format!("/gleaner/apps/big{i}"));
    }
    // The API of this replica still answers, quickly, every time.
    for _ in 0..5 {
        let t = Instant::now();
        let (code, v) = s.call("GET", "/v1/queues", None);
        assert_eq!(code, 200, "{v} after {:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);
}

/// The shipped config left `token_file` commented out, so an installed
/// scheduler served its whole API (apps that run anywhere in the fleet,
/// cancels, queues) without credentials on 127.0.0.1, which every task on
/// that host reaches (tasks share the host network). It names a token file
/// now, created 0600 at first start; one others may read is refused.
#[test]
fn shipped_config_requires_a_token() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let Some(etcd) = Etcd::start() else { return };
    let prefix = tempfile::tempdir().unwrap();
    std::fs::create_dir(prefix.path().join("etc")).unwrap();
    let config = prefix.path().join("etc/scheduler.toml");
    let text = include_str!("../../packaging/etc/scheduler.toml.in")
        .replace("@PREFIX@", prefix.path().to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_gleaner-scheduler"))
            .args([
                "--etcd",
                &etcd.endpoint,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let get = |token: Option<&str>| {
        let mut req = http_client().get(format!("{url}/v1/jobs"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.timeout(Duration::from_secs(5))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let mut child = start();
    wait_for(Duration::from_secs(10), "scheduler answers", || {
        get(None) != 0
    });
    let code = get(None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        code, 401,
        "the installed scheduler answered without a token"
    );
    let token_file = prefix.path().join("etc/scheduler-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert!(token.trim().len() >= 64, "{token:?}");
    // The same token on the next start, and it opens the API.
    let mut child = start();
    wait_for(Duration::from_secs(10), "scheduler answers", || {
        get(None) != 0
    });
    let code = get(Some(token.trim()));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 200);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), token);
    // A token others may read is no secret: refused at start, naming it.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = start().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("scheduler-token") && err.contains("chmod 600"),
        "{err}"
    );
}

/// Constraints had no bound in number or regex size, and the leader
/// compiles every pending job's regexes again on each pass: one queued
/// job with 100 `LIKE` constraints of big (valid) regexes made every pass
/// take seconds, and every other job in the fleet waited that long. A spec
/// holds at most 32 constraints now, each regex at most 256 bytes and
/// 64 KiB compiled; such a job is a 400. (The POST of this test did not
/// answer within 10 s on the old code: validation compiles them too, on
/// one of the API's two worker threads.)
#[test]
fn heavy_constraints_do_not_stall_placement() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    etcd.put("/gleaner/nodes/n1/info", &node_info("n1", 4.0, json!({})));
    assert_eq!(s.call("PUT", "/v1/queues/q", Some(json!({}))).0, 201);
    let heavy: Vec<Value> = (0..100)
        .map(|i| json!([format!("a{i}"), "LIKE", r"\w{60}(\w{60}|\d{60})"]))
        .collect();
    let body = json!({"queue": "q", "jobs": [{"spec": {
        "cmd": "true", "resources": {"cpus": 1, "mem_mb": 64}, "constraints": heavy}}]});
    let t = Instant::now();
    let (code, v) = s.call("POST", "/v1/jobs", Some(body));
    let took = t.elapsed();
    assert_ne!(code, 0, "the submission did not answer within 10 s");
    if code == 201 {
        // The old code: it waits (no node has the attributes), and every
        // pass compiles its regexes again. Another job's placement shows
        // what that costs.
        let body = json!({"queue": "q", "jobs": [{"spec": {
            "cmd": "true", "resources": {"cpus": 1, "mem_mb": 64}}}]});
        let t = Instant::now();
        let (code, v) = s.call("POST", "/v1/jobs", Some(body));
        assert_eq!(code, 201, "{v}");
        let id = v["jobs"][0].as_str().unwrap().to_owned();
        wait_for(Duration::from_secs(60), "the light job placed", || {
            s.call("GET", &format!("/v1/jobs/{id}"), None).1["state"] == "PLACED"
        });
        panic!(
            "accepted in {took:?}; a light job then took {:?} to be placed",
            t.elapsed()
        );
    }
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("constraints"), "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A scheduler without a token (the default configuration, on loopback)
/// took a job from any web page its operator's browser had open: a form
/// posted with `enctype="text/plain"` needs no CORS preflight, and its body
/// (`name=value`, the `=` hidden inside a string) was read as JSON. The
/// job ran the page's command on the fleet. Browser requests that say they
/// come from elsewhere (`Sec-Fetch-Site`, else `Origin`) are refused now,
/// and without a token a browser reaches the API by address only (DNS
/// rebinding makes a page's own name point at the scheduler).
#[test]
fn cross_site_browser_requests_are_refused() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start_without_token(&etcd, "a");
    assert_eq!(
        s.call_raw("PUT", "/v1/queues/q", Some("{}".into()), None).0,
        201
    );
    // What the browser sends for the page's form (`\r\n` ends a text/plain
    // form body).
    let body = concat!(
        r#"{"queue":"q","jobs":[{"spec":{"cmd":"echo pwned #="#,
        r#"","resources":{"cpus":0.1,"mem_mb":16}}}]}"#,
        "\r\n"
    );
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    let own = format!("http://127.0.0.1:{port}");
    let post = |host: Option<&str>, headers: &[(&str, &str)]| {
        let mut r = http_client()
            .post(format!("{}/v1/jobs", s.url))
            .header("content-type", "text/plain")
            .body(body);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().unwrap();
        let code = r.status().as_u16();
        (code, r.text().unwrap_or_default())
    };
    let refused: [&[(&str, &str)]; 4] = [
        // A current browser: fetch metadata and the page's origin.
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ],
        // Another port of the same host is another origin, the same site.
        &[
            ("origin", "http://127.0.0.1:1"),
            ("sec-fetch-site", "same-site"),
        ],
        // An older browser: Origin only; a sandboxed frame's opaque origin.
        &[("origin", "http://evil.example")],
        &[("origin", "null")],
    ];
    for headers in refused {
        let (code, text) = post(None, headers);
        if code == 201 {
            std::thread::sleep(Duration::from_secs(1));
            panic!(
                "{headers:?}: accepted ({text}); jobs now: {:?}",
                etcd.keys("/gleaner/jobs/")
            );
        }
        assert_eq!(code, 403, "{headers:?}: {text}");
        assert!(text.contains("refused"), "{text}");
    }
    // DNS rebinding: the page's name resolves to the scheduler, so the
    // browser calls it same-origin.
    let rebound = format!("evil.example:{port}");
    let origin = format!("http://{rebound}");
    let (code, text) = post(
        Some(&rebound),
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("token_file"), "{text}");
    assert!(etcd.keys("/gleaner/jobs/").is_empty());
    // The console itself (same origin), and clients that are no browser.
    let (code, text) = post(None, &[("origin", &own), ("sec-fetch-site", "same-origin")]);
    assert_eq!(code, 201, "{text}");
    let (code, text) = post(Some(&format!("sched.example:{port}")), &[]);
    assert_eq!(code, 201, "{text}");
    // Marathon's endpoints are behind the same door.
    let app = json!({"id": "/x", "cmd": "sleep 1", "instances": 0}).to_string();
    let r = http_client()
        .post(format!("{}/v2/apps", s.url))
        .header("content-type", "text/plain")
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .body(app)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// Successful etcd reads so far (`Range` calls, from etcd's own metrics).
fn etcd_ranges(etcd: &Etcd) -> u64 {
    let text = http_client()
        .get(format!("{}/metrics", etcd.endpoint))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_handled_total")
                && l.contains("grpc_method=\"Range\"")
                && l.contains("grpc_code=\"OK\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `/ui/api/harvest` read every node's ring from etcd for each call: every
/// open console asks every 15 s, so etcd's reads grew with the consoles
/// (10,000 consoles on 100 nodes: ~1 GB/s). The rings are now read once per
/// 5 s for every caller (agents rewrite them every 60 s), as the overview
/// is. A ring under another node's key (an agent's credential may write any
/// `harvest/` key) is not shown as that node's.
#[test]
fn harvest_reads_are_shared_by_every_console() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    let ring = |node: &str| json!({"node": node, "every_s": 15, "columns": [], "samples": [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [16.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]});
    etcd.put("/gleaner/harvest/n1", &ring("n1"));
    etcd.put("/gleaner/harvest/n2", &ring("n1"));
    // What the leader reads on its own meanwhile.
    let (r0, t0) = (etcd_ranges(&etcd), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let idle_per_s = (etcd_ranges(&etcd) - r0) as f64 / t0.elapsed().as_secs_f64();
    let before = etcd_ranges(&etcd);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (url, token) = (s.url.clone(), s.token.clone());
            std::thread::spawn(move || {
                let c = http_client();
                for _ in 0..25 {
                    let r = c
                        .get(format!("{url}/ui/api/harvest?points=60"))
                        .bearer_auth(&token)
                        .send()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                }
            })
        })
        .collect();
    let t = Instant::now();
    for th in threads {
        th.join().unwrap();
    }
    let reads = etcd_ranges(&etcd) - before;
    let extra = reads as f64 - idle_per_s * t.elapsed().as_secs_f64();
    assert!(
        extra < 20.0,
        "100 harvest calls made {reads} etcd reads in {:?} ({idle_per_s:.1}/s without them)",
        t.elapsed()
    );
    let (code, v) = s.call("GET", "/ui/api/harvest", None);
    assert_eq!(code, 200, "{v}");
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["n1"], "{v}");
}
