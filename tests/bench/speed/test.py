# Benchmark of what a test script waits for, run unchanged by testrig and by nixpkgs' Python driver (see
# tests/bench/run): boot to the backdoor, the round trip, large outputs, how soon waits notice what they wait for,
# and the driver's memory. Prints one BENCH line of JSON. Medians of repeated samples.
import json
import os
import statistics
import time


def median_s(f, n):
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return round(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024, 1)
    except (OSError, StopIteration):
        return 0.0


def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


started = time.monotonic()
machine.start()
machine.succeed("true")  # waits for the backdoor
boot = time.monotonic() - started
machine.wait_for_unit("multi-user.target")

result = {"boot_to_backdoor_s": round(boot, 2)}
result["succeed_true_ms"] = round(median_s(lambda: machine.succeed("true"), 100) * 1000, 1)

produce = "head -c {n} /dev/zero | tr '\\0' a"


wrong = 0  # outputs that came back with bytes missing (a driver that does not notice QEMU's console drops)


def output(n):
    def f():
        global wrong
        if len(machine.succeed(produce.format(n=n))) != n:
            wrong += 1
    return f


result["out_300k_ms"] = round(median_s(output(300_000), 7) * 1000)
result["out_3m_ms"] = round(median_s(output(3_000_000), 3) * 1000)
result["outputs_short_of_10"] = wrong
# What the guest needs to produce 3 MB and base64 it, sent nowhere (the reference of the 3 MB target).
result["guest_3m_base64_ms"] = round(
    median_s(lambda: machine.succeed(produce.format(n=3_000_000) + " | base64 -w 76 >/dev/null"), 3) * 1000)


def guest_now():
    return float(machine.succeed("date +%s.%N"))


def reaction_file():
    machine.succeed("rm -f /tmp/bench-f; (sleep 1; touch /tmp/bench-f) >/dev/null 2>&1 &")
    machine.wait_for_file("/tmp/bench-f")
    seen = guest_now()
    return seen - float(machine.succeed("stat -c %.9Y /tmp/bench-f"))


def reaction_port():
    machine.succeed("(sleep 1; date +%s.%N >/tmp/bench-opened; exec nc -lk 127.0.0.1 7777) >/dev/null 2>&1 &")
    machine.wait_for_open_port(7777)
    seen = guest_now()
    opened = float(machine.succeed("cat /tmp/bench-opened"))
    machine.succeed("pkill -f 'nc -lk 127.0.0.1 7777'")
    machine.wait_for_closed_port(7777)
    return seen - opened


# Guest clock: from the event to the guest's `date` right after the wait returned (so one round trip included).
result["wait_file_reaction_ms"] = round(statistics.median(reaction_file() for _ in range(7)) * 1000)
result["wait_port_reaction_ms"] = round(statistics.median(reaction_port() for _ in range(7)) * 1000)

parent = os.getppid()
result["python_rss_mib"] = rss_mib(os.getpid())
result["runner_rss_mib"] = rss_mib(parent) if comm(parent) == "testrig" else 0.0
print("BENCH " + json.dumps(result), flush=True)
