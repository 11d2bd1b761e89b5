"""Helpers shared by the Python benchmarks: ports, JSON over HTTP, and an
agent started from the release build with a config of the bench's own."""
import json, os, socket, subprocess, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


# The admin token of the agent started last (every TCP request needs it).
TOKEN = None


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if TOKEN:
        headers["Authorization"] = f"Bearer {TOKEN}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def unmount_data(tmp):
    """The agent makes <data_dir>/tasks a nosuid,nodev bind mount: undo it
    before the temp dir is removed."""
    subprocess.run(["umount", "-l", os.path.join(tmp, "data", "tasks")], stderr=subprocess.DEVNULL)

def start_agent(tmp, cgroup_root, rootfs, extra=""):
    """Starts gleaner-agent with its data under tmp; returns (process, base URL)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = os.path.join(tmp, "agent.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "{tmp}/data"\ncgroup_root = "{cgroup_root}"\n'
                f'default_rootfs = "{rootfs}"\nrootfs_dirs = ["{tmp}"]\n{extra}\n')
    agent = subprocess.Popen([os.path.join(BIN, "gleaner-agent"), "--config", cfg],
                             stderr=open(os.path.join(tmp, "agent.log"), "w"))
    global TOKEN
    for _ in range(200):
        try:
            TOKEN = open(os.path.join(tmp, "data", "api.token")).read().strip(); break
        except OSError:
            time.sleep(0.05)
    for _ in range(200):
        try:
            http("GET", base + "/v1/health"); break
        except Exception:
            time.sleep(0.05)
    return agent, base
