#!/usr/bin/env python3
"""Marathon figures against a running scheduler (see run.sh): prints one
JSON line. Usage: client.py URL INSTANCES SUBSCRIBERS
(env APP_CPUS, APP_MEM: each instance's size; real agents need small ones;
APP_HEALTH=COMMAND or HTTP: the app has that health check, and "settled"
also needs every instance healthy)"""
import json, os, sys, threading, time, urllib.request

url, n, subs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")

def wait(what, cond, limit=600):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > limit:
            sys.exit(f"timed out: {what}")
        time.sleep(0.05)

health = os.environ.get("APP_HEALTH", "")

def settled(running):
    a = call("GET", "/v2/apps/bench/big")["app"]
    healthy = not health or a["tasksHealthy"] == running
    return a["tasksRunning"] == running and healthy and call("GET", "/v2/deployments") == []

counts = [0] * subs
attached = threading.Barrier(subs + 1)
stop = threading.Event()

def subscriber(i):
    req = urllib.request.Request(url + "/v2/events", headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=600) as r:
        attached.wait()
        for line in r:
            if stop.is_set():
                return
            if line.startswith(b"event:") and b"event_stream_attached" not in line:
                counts[i] += 1

app = {"id": "/bench/big", "cmd": "sleep 100000",
       "cpus": float(os.environ.get("APP_CPUS", "0.05")),
       "mem": float(os.environ.get("APP_MEM", "16")),
       "instances": n, "upgradeStrategy": {"minimumHealthCapacity": 0.5,
                                           "maximumOverCapacity": 0.2}}
if health == "COMMAND":
    app["healthChecks"] = [{"protocol": "COMMAND", "command": {"value": "true"},
                            "gracePeriodSeconds": 300, "intervalSeconds": 30,
                            "timeoutSeconds": 20, "maxConsecutiveFailures": 3}]
elif health == "HTTP":
    # busybox httpd on the instance's port; the check GETs /.
    app["cmd"] = "mkdir -p w && echo ok > w/index.html && exec httpd -f -p $PORT0 -h w"
    app["portDefinitions"] = [{"port": 0, "protocol": "tcp"}]
    app["healthChecks"] = [{"protocol": "HTTP", "path": "/", "portIndex": 0,
                            "gracePeriodSeconds": 300, "intervalSeconds": 30,
                            "timeoutSeconds": 20, "maxConsecutiveFailures": 3}]
t0 = time.time()
call("POST", "/v2/apps", app)
wait("all running", lambda: settled(n))
start_s = time.time() - t0

threads = [threading.Thread(target=subscriber, args=(i,), daemon=True) for i in range(subs)]
for t in threads:
    t.start()
attached.wait()
t0 = time.time()
call("POST", "/v2/apps/bench/big/restart")
wait("restart done", lambda: settled(n))
restart_s = time.time() - t0
time.sleep(0.5)  # the last events in flight
stop.set()
total = sum(counts)
print(json.dumps({
    "instances": n, "health_check": health or None,
    "to_all_running_s" if not health else "to_all_running_and_healthy_s": round(start_s, 2),
    "rolling_restart_s": round(restart_s, 2),
    "subscribers": subs, "events_per_subscriber": counts,
    "events_per_s_per_subscriber": round(total / subs / restart_s, 1),
    "events_per_s_delivered_total": round(total / restart_s, 1),
}))
