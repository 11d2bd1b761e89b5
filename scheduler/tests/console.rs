//! Issue 17, the web console in a real browser (Debian's headless chromium
//! through chromedriver) against a real etcd and the real scheduler binary,
//! agents simulated through etcd (`sim::FakeAgents`). The pages load with
//! no console error, the numbers on screen are the API's, a job submitted
//! through the API shows within 2 s, a drain shows the task moving.
//! `CONSOLE_SCREENSHOTS=1` writes the 1280×800 screenshots to
//! docs/screenshots/ (otherwise to a temp dir).
//! `console_first_render_at_scale` (ignored; bench/RESULTS.md) measures
//! page weight, first render with 100 nodes and 10,000 jobs, and the
//! scheduler's CPU with 10 consoles open.

mod sim;
mod webdriver;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim::*;
use webdriver::Browser;

fn spec(cpus: f64) -> Value {
    json!({"cmd": "sleep 100", "resources": {"cpus": cpus, "mem_mb": 64}})
}

fn submit(s: &Scheduler, queue: &str, jobs: Vec<Value>) -> Vec<String> {
    let (code, v) = s.call(
        "POST",
        "/v1/jobs",
        Some(json!({"queue": queue, "jobs": jobs})),
    );
    assert_eq!(code, 201, "{v}");
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_owned())
        .collect()
}

fn num(x: f64) -> String {
    // As the console prints numbers: at most 2 decimals.
    let r = (x * 100.0).round() / 100.0;
    format!("{r}")
}

struct Shots {
    dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Shots {
    fn new() -> Shots {
        if std::env::var_os("CONSOLE_SCREENSHOTS").is_some() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            Shots { dir, _tmp: None }
        } else {
            let t = tempfile::tempdir().unwrap();
            Shots {
                dir: t.path().to_owned(),
                _tmp: Some(t),
            }
        }
    }
    fn save(&self, b: &Browser, name: &str) {
        let png = b.screenshot_png();
        assert_eq!(&png[1..4], b"PNG", "a PNG screenshot");
        std::fs::write(self.dir.join(format!("console-{name}.png")), png).unwrap();
    }
}

/// Waits for the console to have drawn `page` with data.
fn wait_page(b: &Browser, sel: &str) {
    b.wait_js(
        Duration::from_secs(10),
        sel,
        &format!("return document.querySelector({sel:?}) !== null && document.body.dataset.rendered !== undefined;"),
    );
}

fn errors(b: &Browser) -> Vec<Value> {
    b.console()
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect()
}

fn harvest_ring(node: &str, now: i64) -> Value {
    // 40 samples 15 s apart; the monitor shrinks the reservation twice.
    let samples: Vec<Value> = (0..40)
        .map(|i| {
            let t = now - (39 - i) * 15;
            let biz = if (15..25).contains(&i) { 3.0 } else { 1.0 };
            let res = if (15..25).contains(&i) { 0.8 } else { 2.8 };
            let batch = if (15..25).contains(&i) { 0.7 } else { 2.5 };
            json!([t, res, 3000.0, batch, 2000.0, biz, 1500.0])
        })
        .collect();
    json!({"node": node, "every_s": 15, "columns": ["t","reserved_cpus","reserved_mem_mb","batch_cpus","batch_mem_mb","business_cpus","business_mem_mb"], "samples": samples})
}

#[test]
fn console_shows_the_fleet_live_in_a_real_browser() {
    let Some(etcd) = Etcd::start() else { return };
    let Some(b) = Browser::start(1280, 800) else {
        return;
    };
    let s = Scheduler::start(&etcd, "c1", "");
    let agents = FakeAgents::start(&etcd.endpoint, Duration::from_millis(100));
    etcd.put(
        "/gleaner/nodes/a/info",
        &node_info("a", 4.0, json!({"rack": "r1"})),
    );
    etcd.put(
        "/gleaner/nodes/b/info",
        &node_info("b", 4.0, json!({"rack": "r2"})),
    );
    let now = chrono::Utc::now().timestamp();
    etcd.put("/gleaner/harvest/a", &harvest_ring("a", now));
    etcd.put("/gleaner/harvest/b", &harvest_ring("b", now));
    for (q, pf) in [("science", 1.0), ("etl", 2.0)] {
        let (code, v) = s.call(
            "PUT",
            &format!("/v1/queues/{q}"),
            Some(json!({"priority_factor": pf})),
        );
        assert!(code == 200 || code == 201, "{v}");
    }
    submit(
        &s,
        "science",
        vec![json!({"spec": spec(1.0)}), json!({"spec": spec(1.0)})],
    );
    // Too big for any node: waits with a reason.
    submit(
        &s,
        "etl",
        vec![json!({"spec": spec(1.0)}), json!({"spec": spec(8.0)})],
    );
    wait_for(Duration::from_secs(10), "three jobs running", || {
        let (_, v) = s.call("GET", "/v1/jobs?state=RUNNING", None);
        v.as_array().is_some_and(|a| a.len() == 3)
    });
    let shots = Shots::new();

    // Log in by URL: the token goes to sessionStorage and leaves the address bar.
    b.goto(&format!("{}/ui/?token={}#/fleet", s.url, s.token));
    wait_page(&b, "tr[data-node=\"b\"]");
    let href = b.js("return location.href;");
    assert!(!href.as_str().unwrap().contains("token"), "{href}");
    assert_eq!(
        b.js("return sessionStorage.getItem('gleaner-token');"),
        json!(s.token)
    );

    // Fleet: the numbers are /v1/nodes'.
    let (_, nodes) = s.call("GET", "/v1/nodes", None);
    wait_for(
        Duration::from_secs(5),
        "the fleet page shows the API's task counts",
        || {
            let (_, nodes) = s.call("GET", "/v1/nodes", None);
            nodes.as_array().unwrap().iter().all(|n| {
                let sel = format!(
                    "tr[data-node={:?}] [data-k=tasks]",
                    n["node"].as_str().unwrap()
                );
                b.js(&format!(
                    "const e = document.querySelector({sel:?}); return e && e.textContent;"
                )) == json!(n["tasks"].to_string())
            })
        },
    );
    for n in nodes.as_array().unwrap() {
        let node = n["node"].as_str().unwrap();
        let shown = b.js(&format!(
            "return document.querySelector('tr[data-node={node:?}] [data-role=batch] [data-k=reserved-cpus]').textContent;"
        ));
        assert_eq!(
            shown,
            json!(num(n["roles"]["batch"]["reserved"]["cpus"]
                .as_f64()
                .unwrap()))
        );
    }
    // Sparklines from the harvest rings.
    b.wait_js(
        Duration::from_secs(5),
        "sparklines",
        "return document.querySelectorAll('svg.spark').length === 2;",
    );
    shots.save(&b, "fleet");

    // Queues: pending / running / share as /v1/queues says.
    b.goto(&format!("{}/ui/#/queues", s.url));
    wait_page(&b, "tr[data-queue=\"etl\"]");
    wait_for(
        Duration::from_secs(5),
        "queue numbers equal the API's",
        || {
            let (_, qs) = s.call("GET", "/v1/queues", None);
            qs.as_array().unwrap().iter().all(|q| {
            let name = q["name"].as_str().unwrap();
            let cell = |k: &str| {
                b.js(&format!(
                    "const e = document.querySelector('tr[data-queue={name:?}] [data-k={k}]'); return e && e.textContent;"
                ))
            };
            cell("pending") == json!(q["pending"].to_string())
                && cell("running") == json!(q["running"].to_string())
                && cell("share") == json!(format!("{:.1}\u{a0}%", 100.0 * q["share"].as_f64().unwrap()))
        })
        },
    );
    // The waiting job says why.
    let big = b.wait_js(
        Duration::from_secs(5),
        "a wait reason",
        "const r = [...document.querySelectorAll('#jobs tr')].find(r => r.textContent.includes('QUEUED')); return r && r.textContent;",
    );
    assert!(big.as_str().unwrap().len() > 40, "a reason is shown: {big}");

    // A job submitted through the API shows within 2 s.
    let t0 = Instant::now();
    let id = submit(&s, "science", vec![json!({"spec": spec(0.5)})]).remove(0);
    b.wait_js(
        Duration::from_secs(2),
        "the new job within 2 s",
        &format!("return document.querySelector('tr[data-job={id:?}]') !== null;"),
    );
    eprintln!("submitted job on screen after {:?}", t0.elapsed());
    b.wait_js(
        Duration::from_secs(5),
        "the new job running",
        &format!("const e = document.querySelector('tr[data-job={id:?}] [data-k=state]'); return e && e.textContent === 'RUNNING';"),
    );
    shots.save(&b, "queues");

    // A drain moves the task: the job page shows the old node, then the new.
    b.goto(&format!("{}/ui/#/jobs/{id}", s.url));
    wait_page(&b, "#job-node");
    let (_, j) = s.call("GET", &format!("/v1/jobs/{id}"), None);
    let first = j["node"].as_str().unwrap().to_owned();
    b.wait_js(
        Duration::from_secs(5),
        "job page shows its node",
        &format!("return document.getElementById('job-node').textContent === {first:?};"),
    );
    agents.drain.lock().unwrap().insert(format!("{id}.1"));
    let moved = b.wait_js(
        Duration::from_secs(10),
        "the task moved to the other node",
        &format!("const n = document.getElementById('job-node').textContent; return n !== {first:?} && n !== '–' && n;"),
    );
    let (_, j) = s.call("GET", &format!("/v1/jobs/{id}"), None);
    assert_eq!(moved, j["node"], "the screen shows the API's node");
    let seen = b.js("return document.getElementById('seen').textContent;");
    let seen = seen.as_str().unwrap();
    assert!(
        seen.contains(&format!("on {first}"))
            && seen.contains(&format!("on {}", moved.as_str().unwrap())),
        "{seen}"
    );
    b.wait_js(
        Duration::from_secs(5),
        "attempt 2 running",
        "return document.getElementById('job-state').textContent === 'RUNNING';",
    );
    shots.save(&b, "job");

    // Harvest: a chart with the two shrinks marked.
    b.goto(&format!("{}/ui/#/harvest", s.url));
    wait_page(&b, "svg.chart");
    let label = b.js("return document.querySelector('svg.chart').getAttribute('aria-label');");
    assert!(label.as_str().unwrap().contains("1 shrink"), "{label}");
    shots.save(&b, "harvest");

    // Apps: instances and running as Marathon's API says.
    let (code, _, v) = s.call_full(
        "POST",
        "/v2/apps",
        Some(r#"{"id": "web", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32, "instances": 2}"#),
    );
    assert_eq!(code, 201, "{v}");
    b.goto(&format!("{}/ui/#/apps", s.url));
    wait_page(&b, "tr[data-app=\"/web\"]");
    wait_for(Duration::from_secs(10), "apps page equals /v2/apps", || {
        let (_, v) = s.call("GET", "/v2/apps/web", None);
        let running = v["app"]["tasksRunning"].to_string();
        running == "2"
            && b.js("const e = document.querySelector('tr[data-app=\"/web\"] [data-k=running]'); return e && e.textContent;")
                == json!(running)
    });
    shots.save(&b, "apps");

    // A phone: one column, nothing wider than the screen but the tables'
    // own scroll boxes.
    b.set_viewport(390, 844);
    b.goto(&format!("{}/ui/#/queues", s.url));
    wait_page(&b, "#jobs");
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth;");
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways by {overflow} px"
    );
    shots.save(&b, "phone");
    b.set_viewport(1280, 800);

    // Keyboard: the page links are reachable and switch pages.
    b.js(
        "document.querySelector('nav a[data-page=fleet]').focus(); document.activeElement.click();",
    );
    wait_page(&b, "#nodes");

    let errs = errors(&b);
    assert!(errs.is_empty(), "console errors: {errs:?}");

    // A lost node stands out.
    etcd.del("/gleaner/nodes/b/info");
    b.wait_js(
        Duration::from_secs(5),
        "node b shown lost",
        "const r = document.querySelector('tr[data-node=\"b\"]'); return r && r.classList.contains('lost');",
    );

    // A wrong token: the login form, one line why.
    b.js("sessionStorage.clear();");
    b.goto(&format!("{}/ui/?token=wrong#/fleet", s.url));
    let msg = b.wait_js(
        Duration::from_secs(5),
        "the login form",
        "return !document.getElementById('login').hidden && document.getElementById('login-error').textContent;",
    );
    assert_eq!(msg, json!("the token was refused"));
    // The assets never need the token; the data always does.
    let (code, _) = s.call_raw("GET", "/ui/app.js", None, None);
    assert_eq!(code, 200);
    let (code, _) = s.call_raw("GET", "/ui/api/overview", None, None);
    assert_eq!(code, 401);
    let (code, v) = s.call("GET", "/ui/api/harvest?points=0", None);
    assert_eq!(code, 400, "{v}");
}

/// Figures for bench/RESULTS.md: 100 nodes, 10,000 jobs; page weight and
/// time to first render; scheduler CPU with 10 consoles open vs none.
#[test]
#[ignore]
fn console_first_render_at_scale() {
    let Some(etcd) = Etcd::start() else { return };
    let Some(b) = Browser::start(1280, 800) else {
        return;
    };
    let s = Scheduler::start(&etcd, "c1", "");
    let now = chrono::Utc::now().timestamp();
    for i in 0..100 {
        let n = format!("n{i:03}");
        etcd.put(
            &format!("/gleaner/nodes/{n}/info"),
            &node_info(&n, 4.0, json!({"rack": format!("r{}", i % 10)})),
        );
        etcd.put(&format!("/gleaner/harvest/{n}"), &harvest_ring(&n, now));
    }
    let (code, _) = s.call(
        "PUT",
        "/v1/queues/big",
        Some(json!({"priority_factor": 1.0})),
    );
    assert!(code == 200 || code == 201);
    // 10,000 jobs that fit nowhere (they stay QUEUED with a reason).
    for _ in 0..100 {
        submit(
            &s,
            "big",
            (0..100).map(|_| json!({"spec": spec(64.0)})).collect(),
        );
    }
    let pid = s.child.as_ref().unwrap().id();
    // etcd's pid: the process whose command line names our endpoint.
    let etcd_pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            cmd.starts_with("etcd") && cmd.contains(&etcd.endpoint)
        })
        .expect("etcd's pid");
    let cpu_of = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let cpu = || cpu_of(pid);
    let etcd_cpu = || cpu_of(etcd_pid);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // First loads, fresh each time (page weight counts everything fetched).
    for round in 0..3 {
        b.js("sessionStorage.clear();");
        b.goto("about:blank");
        b.goto(&format!("{}/ui/?token={}#/queues", s.url, s.token));
        wait_page(&b, "#jobs");
        let v = b.js(
            "const nav = performance.getEntriesByType('navigation')[0];\
             const res = performance.getEntriesByType('resource');\
             return {first_render_ms: window.gleanerFirstRender,\
                     bytes: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),\
                     assets: nav.transferSize + res.filter(r => !r.name.includes('/ui/api/')).reduce((a, r) => a + r.transferSize, 0)};",
        );
        eprintln!("round {round}: {v}");
    }
    // The overview itself: fresh builds (the cache lasts 0.5 s) and size.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        let t = Instant::now();
        let (code, v) = s.call("GET", "/ui/api/overview", None);
        assert_eq!(code, 200);
        eprintln!(
            "overview: {:?}, {} bytes, {} jobs listed of {}",
            t.elapsed(),
            v.to_string().len(),
            v["jobs"].as_array().unwrap().len(),
            v["jobs_total"]
        );
    }
    // Scheduler CPU with no console and with 10 open, interleaved
    // (none, 10, none, 10), 20 s each.
    let mut tabs = vec![b.new_window()];
    for _ in 1..10 {
        tabs.push(b.new_window());
    }
    let show = |url: &str| {
        for h in &tabs {
            b.switch_to(h);
            b.goto(url);
        }
    };
    let console = format!("{}/ui/?token={}#/queues", s.url, s.token);
    for round in 0..2 {
        show("about:blank");
        std::thread::sleep(Duration::from_secs(3));
        let (c0, e0) = (cpu(), etcd_cpu());
        std::thread::sleep(Duration::from_secs(20));
        let none = (cpu() - c0) / 20.0 * 100.0;
        let etcd_none = (etcd_cpu() - e0) / 20.0 * 100.0;
        show(&console);
        let visible: Vec<Value> = tabs
            .iter()
            .map(|h| {
                b.switch_to(h);
                b.js("return document.visibilityState;")
            })
            .collect();
        eprintln!("consoles: {visible:?}");
        std::thread::sleep(Duration::from_secs(3));
        let (c0, e0) = (cpu(), etcd_cpu());
        std::thread::sleep(Duration::from_secs(20));
        let ten = (cpu() - c0) / 20.0 * 100.0;
        let etcd_ten = (etcd_cpu() - e0) / 20.0 * 100.0;
        let polls: Vec<Value> = tabs
            .iter()
            .map(|h| {
                b.switch_to(h);
                b.js("return performance.getEntriesByType('resource').filter(r => r.name.includes('/ui/api/overview')).length;")
            })
            .collect();
        eprintln!("overview fetches per console in the 23 s: {polls:?}");
        eprintln!(
            "round {round}: scheduler CPU {none:.1} % of a core with no console, {ten:.1} % with 10 open; \
             etcd {etcd_none:.1} % / {etcd_ten:.1} %; loadavg {}",
            load().trim()
        );
    }
}

/// Review of issue 17: a web page from elsewhere, opened in the operator's
/// browser, posts a job to a scheduler without a token (the default, on
/// loopback) with a `text/plain` form, which needs no CORS preflight. The
/// scheduler refuses it (403) and stores nothing; the console on its own
/// origin still works in the same browser. (`tests/review.rs` has the same
/// requests without a browser, and failed on the old code: 201.)
#[test]
fn a_foreign_page_cannot_post_jobs_through_the_browser() {
    let Some(etcd) = Etcd::start() else { return };
    let Some(b) = Browser::start(1280, 800) else {
        return;
    };
    let s = Scheduler::start_without_token(&etcd, "c3");
    assert_eq!(
        s.call_raw("PUT", "/v1/queues/q", Some("{}".into()), None).0,
        201
    );
    // The foreign page: served from `localhost` (another site than
    // 127.0.0.1), it submits its form as soon as it loads.
    let page = format!(
        r#"<!doctype html><form id=f method=post enctype=text/plain action="{}/v1/jobs"><input type=hidden name='{{"queue":"q","jobs":[{{"spec":{{"cmd":"echo pwned #' value='","resources":{{"cpus":0.1,"mem_mb":16}}}}}}]}}'></form><script>document.getElementById('f').submit()</script>"#,
        s.url
    );
    let evil = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in evil.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    b.goto(&format!("http://localhost:{evil_port}/"));
    // The form's answer replaces the page: the scheduler's JSON.
    let shown = b.wait_js(
        Duration::from_secs(15),
        "the form's answer",
        "return document.body && document.body.innerText.includes('refused') ? document.body.innerText : null;",
    );
    assert!(
        shown.as_str().unwrap_or("").contains("cross-site"),
        "{shown}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(etcd.keys("/gleaner/jobs/").is_empty(), "a job was stored");
    // The console itself, by address, in the same browser (the 403's
    // log line drained first).
    let _ = b.console();
    b.goto(&format!("{}/ui/#/queues", s.url));
    wait_page(&b, "#queues tr[data-queue=\"q\"]");
    let errs: Vec<Value> = errors(&b)
        .into_iter()
        .filter(|e| !e["message"].as_str().unwrap_or("").contains("/v1/jobs"))
        .collect();
    assert!(errs.is_empty(), "{errs:?}");
}
