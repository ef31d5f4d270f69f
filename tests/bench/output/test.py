# Large outputs and the round trip, medians (tests/bench/RESULTS.md, 2026-12-03T22:06Z, says how it was run).
import time
start_all()
machine.wait_for_unit("multi-user.target")
def timed(cmd, n=5):
    out = []
    for _ in range(n):
        t0 = time.monotonic(); o = machine.succeed(cmd); out.append(time.monotonic() - t0)
    out.sort()
    return out[len(out)//2], len(o)
r = {}
r["true_ms"] = timed("true", 21)[0] * 1000
r["out_300k_ms"] = timed("head -c 300000 /dev/zero | tr '\\0' a")[0] * 1000
r["out_3m_ms"] = timed("head -c 3000000 /dev/zero | tr '\\0' a")[0] * 1000
r["guest_3m_base64_ms"] = timed("head -c 3000000 /dev/zero | tr '\\0' a | base64 -w 76 > /dev/null")[0] * 1000
print("BENCH", {k: round(v, 1) for k, v in r.items()})
