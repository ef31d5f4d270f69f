# Benchmark: boot to a ready backdoor, then the round trip of succeed("true"), then QEMU's resident memory (what
# the scheduler's per-VM overhead estimate stands for). Prints one BENCH line of JSON.
import json
import os
import statistics
import time


def qemu_rss_mib() -> float:
    """Resident memory of the QEMU processes testrig (this script's parent) started, in MiB."""
    total_kib = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            comm, ppid = stat[stat.index("(") + 1:stat.rindex(")")], int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == os.getppid() and comm.startswith("qemu"):
                with open(f"/proc/{pid}/status") as f:
                    total_kib += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, ValueError, StopIteration):
            continue
    return round(total_kib / 1024, 1)


started = time.monotonic()
machine.start()
machine.succeed("true")  # waits for the backdoor's ready marker
boot = time.monotonic() - started

samples = []
for _ in range(200):
    t0 = time.perf_counter()
    machine.succeed("true")
    samples.append(time.perf_counter() - t0)

guest_total_mib, guest_used_mib = map(int, machine.succeed("free -m | awk '/^Mem:/ {print $2, $3}'").split())

print("BENCH " + json.dumps({
    "boot_to_ready_1_node_s": round(boot, 2),
    "succeed_true_median_ms": round(statistics.median(samples) * 1000, 2),
    "succeed_true_p90_ms": round(sorted(samples)[int(len(samples) * 0.9)] * 1000, 2),
    "qemu_rss_mib_1_node": qemu_rss_mib(),
    "guest_mem_total_used_mib": f"{guest_total_mib}/{guest_used_mib}",
}), flush=True)
