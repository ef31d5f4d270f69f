# Benchmark: two nodes from start_all() until both backdoors answer. Prints one BENCH line of JSON.
import json
import time

started = time.monotonic()
start_all()
client.succeed("true")
server.succeed("true")
print("BENCH " + json.dumps({"boot_to_ready_2_nodes_s": round(time.monotonic() - started, 2)}), flush=True)
