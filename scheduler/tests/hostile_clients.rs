//! Hostile clients of the scheduler's HTTP listener (review of issue 13),
//! against a real etcd and the real scheduler binary (tests/sim). Each
//! failed on the code before its fix.

mod sim;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sim::*;

fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns what came and how long it took.
fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
        if t.elapsed() >= limit {
            break;
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

/// The scheduler served with `axum::serve`: no deadline for a request's
/// head or body, so idle and trickling connections (slowloris) were held
/// for ever, each a descriptor and a task, and enough of them exhaust the
/// process's descriptors. It now serves through the agent's listener
/// (`gleaner_core::serve`): head and body deadlines, a connection cap.
#[test]
fn slowloris_connections_are_dropped_and_the_api_answers() {
    let Some(etcd) = Etcd::start() else { return };
    // The default deadline (10 s): the old binary starts with this config too.
    let s = Scheduler::start(&etcd, "a", "");
    let addr = s.url.trim_start_matches("http://").to_owned();
    // 1,000 slowloris connections: open, half a request line, then nothing.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut c = TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            let _ = c.write_all(b"GET /v1/health HTTP/1.1\r\nX-Slow: ");
        }
        idle.push(c);
    }
    let mut lat = Vec::new();
    for path in ["/v1/health", "/v2/info"] {
        for _ in 0..50 {
            let t = Instant::now();
            let (code, v) = s.call("GET", path, None);
            assert_eq!(code, 200, "{path}: {v}");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    eprintln!(
        "FIGURE /v1/health + /v2/info with 1000 idle connections held: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    assert!(percentile(&lat, 0.99) < 1000.0);

    // The idle connections are closed by the server after the deadline.
    let (_, took) = until_closed(idle.last_mut().unwrap(), Duration::from_secs(20));
    assert!(
        took < Duration::from_secs(15),
        "idle connection kept {took:?}"
    );
    let (_, took) = until_closed(&mut idle[0], Duration::from_secs(20));
    assert!(took < Duration::from_secs(15), "half a head kept {took:?}");
    drop(idle);

    // A head, then a body that never comes: 408 within the deadline, and
    // nothing stored.
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "PUT /v1/queues/q HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"prio",
        s.token
    )
    .unwrap();
    let (answer, took) = until_closed(&mut c, Duration::from_secs(20));
    assert!(
        took < Duration::from_secs(15),
        "trickled body kept {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("did not arrive"), "{answer:?}");
    assert!(etcd.keys("/gleaner/queues/").is_empty());
    // Marathon paths answer in Marathon's shape.
    let mut c = TcpStream::connect(&addr).unwrap();
    write!(
        c,
        "POST /v2/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        s.token
    )
    .unwrap();
    let (answer, _) = until_closed(&mut c, Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"message\""), "{answer:?}");
    assert!(etcd.keys("/gleaner/apps/").is_empty());
    let (code, _) = s.call("GET", "/v1/health", None);
    assert_eq!(code, 200);
}

/// A connection cap: past `max_connections` a new connection is closed at
/// once rather than served (the descriptor limit is raised to fit it).
#[test]
fn connections_past_the_cap_are_closed() {
    let Some(etcd) = Etcd::start() else { return };
    // A long deadline: the held connections must not time out under load
    // before the extra one comes.
    let s = Scheduler::start(
        &etcd,
        "a",
        "max_connections = 8\nrequest_read_timeout_s = 60.0\n",
    );
    let addr = s.url.trim_start_matches("http://").to_owned();
    // The start-up's health checks may still hold a slot: let them go.
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let _ = write!(extra, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let (answer, took) = until_closed(&mut extra, Duration::from_secs(10));
    assert!(answer.is_empty(), "served past the cap: {answer:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Closed by their clients, the slots are free again.
    drop(held);
    wait_for(Duration::from_secs(10), "a slot freed", || {
        s.call("GET", "/v1/health", None).0 == 200
    });
}

fn sse(addr: &str, token: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET /v2/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    c
}

/// Reads the response head (and whatever came with it).
fn head(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `/v2/events` took any number of subscribers, each an etcd watch and a
/// pump task: a client opening thousands held as many watches on etcd.
/// Past `max_event_streams` the answer is 503 with a reason; a slot frees
/// when its subscriber goes.
#[test]
fn event_streams_are_capped() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "max_event_streams = 2\n");
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut first = sse(&addr, &s.token);
    let h = head(&mut first);
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let mut second = sse(&addr, &s.token);
    assert!(head(&mut second).starts_with("HTTP/1.1 200"));
    let mut third = sse(&addr, &s.token);
    let h = head(&mut third);
    assert!(h.starts_with("HTTP/1.1 503"), "a third subscriber: {h}");
    let (code, _, v) = s.call_full("GET", "/v2/events", None);
    assert_eq!(code, 503, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_event_streams"),
        "{v}"
    );
    // The API itself is not capped.
    assert_eq!(s.call("GET", "/v2/apps", None).0, 200);
    drop(first);
    wait_for(Duration::from_secs(10), "a slot freed", || {
        let mut c = sse(&addr, &s.token);
        head(&mut c).starts_with("HTTP/1.1 200")
    });
    drop(second);
}

/// The create revision of an etcd key.
fn create_revision(etcd: &Etcd, key: &str) -> i64 {
    let out = etcd.ctl(&["get", key, "-w", "json"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["kvs"][0]["create_revision"].as_i64().unwrap()
}

/// An app instance's scoped token may define apps in its own group only in
/// its app's own queue (`GLEANER_QUEUE`) and role (`acceptedResourceRoles`);
/// the admin may name any.
#[test]
fn scoped_tokens_stay_in_their_queue_and_role() {
    let Some(etcd) = Etcd::start() else { return };
    let s = Scheduler::start(&etcd, "a", "");
    let own = json!({"id": "/team/sched", "cmd": "sleep 100", "cpus": 0.1, "mem": 16,
        "instances": 0, "labels": {"GLEANER_API_ACCESS": "own-group"}});
    let (code, _, v) = s.call_full("POST", "/v2/apps", Some(&own.to_string()));
    assert_eq!(code, 201, "{v}");
    let created = create_revision(&etcd, "/gleaner/apps/team/sched");
    let key = gleaner_core::app_token::derive_key(&s.token);
    let token = gleaner_core::app_token::mint(&key, "/team/sched", created);
    let as_app = |method: &str, path: &str, body: Value| {
        s.call_raw(method, path, Some(body.to_string()), Some(&token))
    };
    let worker = |extra: Value| {
        let mut w = json!({"id": "/team/w", "cmd": "sleep 100", "cpus": 0.1, "mem": 16,
            "instances": 0});
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        w
    };
    for (what, body) in [
        (
            "another queue",
            worker(json!({"labels": {"GLEANER_QUEUE": "gold"}})),
        ),
        (
            "another role",
            worker(json!({"acceptedResourceRoles": ["prod"]})),
        ),
        (
            "another role beside *",
            worker(json!({"acceptedResourceRoles": ["*", "prod"]})),
        ),
    ] {
        let (code, v) = as_app("POST", "/v2/apps", body.clone());
        assert_eq!(code, 403, "{what}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("own"),
            "{what}: {v}"
        );
        let (code, v) = as_app("PUT", "/v2/apps/team/w", body);
        assert_eq!(code, 403, "{what} by PUT: {v}");
        // Its own definition cannot be moved either.
    }
    let (code, v) = as_app(
        "PUT",
        "/v2/apps/team/sched",
        json!({"labels": {"GLEANER_API_ACCESS": "own-group", "GLEANER_QUEUE": "gold"}}),
    );
    assert_eq!(code, 403, "own app moved to another queue: {v}");
    assert!(etcd.get("/gleaner/apps/team/w").is_none());
    // In its own queue and role: fine.
    let (code, v) = as_app(
        "POST",
        "/v2/apps",
        worker(json!({"labels": {"GLEANER_QUEUE": "marathon"}, "acceptedResourceRoles": ["*"]})),
    );
    assert_eq!(code, 201, "{v}");
    // The native API (any queue, any role) is the admin's.
    let (code, v) = as_app(
        "POST",
        "/v1/jobs",
        json!({"queue": "gold", "jobs": [{"spec": {"cmd": "true", "role": "prod",
            "resources": {"cpus": 0.1, "mem_mb": 16}}}]}),
    );
    assert_eq!(code, 403, "{v}");
    assert!(etcd.keys("/gleaner/jobs/").is_empty());
    // The admin names any.
    let (code, _, v) = s.call_full(
        "POST",
        "/v2/apps",
        Some(
            &json!({"id": "/team/gold", "cmd": "sleep 1", "instances": 0,
                "labels": {"GLEANER_QUEUE": "gold"}, "acceptedResourceRoles": ["prod"]})
            .to_string(),
        ),
    );
    assert_eq!(code, 201, "{v}");
}
