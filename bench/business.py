#!/usr/bin/env python3
"""A synthetic business service: CPU-bound workers that count their own
iterations per 100 ms slot, following a load pattern. Prints JSON:
{"slots": [[iterations per worker...], ...], "cpu_s": total CPU seconds,
"delay_ms": [[run-queue delay per worker, ms...], ...]}. The delay is the
kernel's own count of the time each worker was runnable but waited for a
CPU (`/proc/thread-self/schedstat`, 2nd field), per slot: the business-side
signal issue 16 asks about.

Pattern (seconds, scaled by SCALE): idle 6, half (1 worker) 6, full (all
workers) 6, then 6 bursts of 2 s full / 2 s idle."""
import json, multiprocessing as mp, os, sys, time

SLOT = 0.1

def pattern(scale, workers):
    p = [(6, 0), (6, 1), (6, workers)] + [(2, workers), (2, 0)] * 6
    return [(d * scale, n) for d, n in p]

def run_delay_ns(f):
    """ns this thread waited for a CPU; 0 without schedstat (a kernel
    without CONFIG_SCHED_INFO): the delays read 0 then, the counts stand."""
    if f is None:
        return 0
    f.seek(0)
    return int(f.read().split()[1])

def worker(idx, plan, t0, counts, cpu, delays, WORKERS):
    nslots = len(counts) // WORKERS
    x = 0
    try:
        sched = open("/proc/thread-self/schedstat")
    except OSError:
        sched = None
    slot, d0 = -1, run_delay_ns(sched)
    while True:
        now = time.monotonic() - t0
        s = int(now / SLOT)
        if s >= nslots:
            break
        if s != slot:
            # The delay since the last slot change goes to the slot that
            # just ended (a wait that spans slots counts in the slot where
            # this worker last looked, i.e. where it began).
            d = run_delay_ns(sched)
            if slot >= 0:
                delays[slot * WORKERS + idx] += (d - d0) / 1e6
            slot, d0 = s, d
        # Active in this slot?
        active = active_workers(plan, now)
        if idx >= active:
            time.sleep(min(SLOT, 0.02))
            continue
        for _ in range(2000):
            x += 1
        counts[s * WORKERS + idx] += 1
    if 0 <= slot < nslots:
        delays[slot * WORKERS + idx] += (run_delay_ns(sched) - d0) / 1e6
    cpu[idx] = time.process_time()

def active_workers(plan, now):
    t = 0.0
    for d, n in plan:
        if now < t + d:
            return n
        t += d
    return 0

if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    WORKERS = os.cpu_count()
    plan = pattern(scale, WORKERS)
    total = sum(d for d, _ in plan)
    nslots = int(total / SLOT)
    counts = mp.Array("q", nslots * WORKERS, lock=False)
    cpu = mp.Array("d", WORKERS, lock=False)
    delays = mp.Array("d", nslots * WORKERS, lock=False)
    t0 = time.monotonic() + 0.5
    t0_wall = time.time() + 0.5
    procs = [mp.Process(target=worker, args=(i, plan, t0, counts, cpu, delays, WORKERS)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    slots = [[counts[s * WORKERS + w] for w in range(WORKERS)] for s in range(nslots)]
    delay_ms = [[round(delays[s * WORKERS + w], 3) for w in range(WORKERS)] for s in range(nslots)]
    print(json.dumps({"slots": slots, "cpu_s": sum(cpu), "delay_ms": delay_ms, "plan": plan, "slot": SLOT, "t0_wall": t0_wall}))
