"""Helpers shared by the Python benchmarks: ports, JSON over HTTP, and an
agent started from the release build with a config of the bench's own."""
import json, os, socket, subprocess, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GLEANER_BIN: another build's binaries (target/debug for a smoke run).
BIN = os.path.join(ROOT, os.environ.get("GLEANER_BIN", os.path.join("target", "release")))


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


# ---- intervals for interleaved rounds (bench/launch's Rust side,
# agent/benches/stats.rs, implements the same two and is tested on the same
# vectors in agent/tests/benchstats.rs)

# Two-sided 95 % quantiles of Student's t by degrees of freedom; between
# rows the next smaller df is used (wider, so conservative).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
        40: 2.021, 60: 2.000, 120: 1.980}


def t95(df):
    return _T95[max(k for k in _T95 if k <= df)]


def mean_interval(xs):
    """(mean, low, high): the mean and its 95 % Student t interval; the
    interval is None below 2 samples."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, None, None
    sd = (sum((x - m) ** 2 for x in xs) / (n - 1)) ** 0.5
    h = t95(n - 1) * sd / n ** 0.5
    return m, m - h, m + h


def median_interval(xs):
    """(median, low, high): the median and its distribution-free 95 %
    interval from order statistics (the k-th smallest and largest, k the
    largest with P(Binomial(n, 1/2) < k) <= 2.5 %). Needs no assumption on
    the shape (launch times have long tails); None below 6 samples, where
    no such pair reaches 95 %."""
    s = sorted(xs)
    n = len(s)
    med = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    k, cdf = 0, 0.0
    from math import comb
    while True:
        p = comb(n, k) / 2 ** n
        if cdf + p > 0.025:
            break
        cdf += p
        k += 1
    if k == 0:
        return med, None, None
    return med, s[k - 1], s[n - k]


def fmt_interval(v, lo, hi, unit="", digits=1):
    if lo is None:
        return f"{v:.{digits}f}{unit} (interval needs more rounds)"
    return f"{v:.{digits}f}{unit} [{lo:.{digits}f}, {hi:.{digits}f}]"


if __name__ == "__main__":
    # The vectors agent/tests/benchstats.rs checks on the Rust side.
    assert median_interval([float(x) for x in range(20, 0, -1)]) == (10.5, 6.0, 15.0)
    assert median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (3.5, 1.0, 6.0)
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (3.0, None, None)
    m, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert m == 3.0 and abs(lo - 1.037) < 1e-3 and abs(hi - 4.963) < 1e-3
    assert mean_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)
    print("benchlib: ok")
