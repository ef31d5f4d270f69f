# Benchmark: boot to a ready backdoor, then the round trip of succeed("true"). Prints one BENCH line of JSON.
import json
import statistics
import time

started = time.monotonic()
machine.start()
machine.succeed("true")  # waits for the backdoor's ready marker
boot = time.monotonic() - started

samples = []
for _ in range(200):
    t0 = time.perf_counter()
    machine.succeed("true")
    samples.append(time.perf_counter() - t0)

print("BENCH " + json.dumps({
    "boot_to_ready_1_node_s": round(boot, 2),
    "succeed_true_median_ms": round(statistics.median(samples) * 1000, 2),
    "succeed_true_p90_ms": round(sorted(samples)[int(len(samples) * 0.9)] * 1000, 2),
}), flush=True)
