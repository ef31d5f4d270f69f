# The backdoor protocol against a real guest: exact bytes and statuses, large output, guest-side timeouts.
import base64

machine.wait_for_unit("multi-user.target")

t.assertEqual(machine.succeed("true"), "")
t.assertEqual(machine.execute("printf ''; exit 7"), (7, ""))
t.assertEqual(machine.execute("echo out; echo err >&2; exit 3"), (3, "out\n"))

# Every byte value survives the round trip (the driver hands undecodable bytes over as surrogates).
raw = machine.succeed("for i in $(seq 0 255); do printf \"\\\\$(printf %03o $i)\"; done").encode("utf-8", "surrogateescape")
t.assertEqual(raw, bytes(range(256)))

big = machine.succeed("head -c 1500000 /dev/urandom | base64 -w 0")
t.assertEqual(len(base64.b64decode(big)), 1500000)
t.assertEqual(len(machine.succeed("head -c 8000000 /dev/zero | tr '\\0' x")), 8000000)

# A guest-side timeout is exit status 124, and the shell is still usable afterwards.
t.assertEqual(machine.execute("sleep 30", timeout=1)[0], 124)
t.assertEqual(machine.succeed("echo $((6 * 7))"), "42\n")

machine.fail("false", "test -e /nonexistent")
t.assertEqual(machine.wait_until_succeeds("test $(cat /proc/uptime | cut -d. -f1) -gt 0"), "")
machine.succeed("(sleep 2; touch /tmp/later) >/dev/null 2>&1 &")
machine.wait_for_file("/tmp/later", timeout=30)

# The waits run as loops in the guest (runner/src/machine/waits.rs): each against the real thing.
machine.succeed("(sleep 1; exec nc -lk 127.0.0.1 4321) >/dev/null 2>&1 &")
machine.wait_for_open_port(4321, timeout=30)
machine.succeed("pkill -f 'nc -lk 127.0.0.1 4321'")
machine.wait_for_closed_port(4321, timeout=30)
machine.succeed("(sleep 1; exec nc -lkU /tmp/protocol.sock) >/dev/null 2>&1 &")
machine.wait_for_open_unix_socket("/tmp/protocol.sock", timeout=30)
machine.succeed("pkill -f 'nc -lkU /tmp/protocol.sock'")
t.assertEqual(machine.wait_until_fails("cat /tmp/later; rm /tmp/later; test -e /tmp/later", timeout=30), "")
t.assertEqual(machine.wait_until_succeeds("echo try; test -e /tmp/later2 || { touch /tmp/later2; false; }", timeout=30), "try\n")
machine.wait_for_unit("backdoor.service")
machine.succeed("systemd-run --unit=protocol-fails false")
with t.assertRaisesRegex(Exception, "inactive and there are no pending jobs|reached state `failed`"):
    machine.wait_for_unit("protocol-fails.service", timeout=30)
with t.assertRaisesRegex(Exception, "timed out after"):
    machine.wait_for_file("/nonexistent", timeout=2)
t.assertEqual(machine.succeed("echo still in step"), "still in step\n")
t.assertEqual(machine.get_unit_property("multi-user.target", "ActiveState"), "active")
machine.require_unit_state("multi-user.target")
t.assertRegex(machine.send_monitor_command("info version"), r"\d+\.\d+")

# Files both ways through the shared dir, screenshots and the console log.
import os
import tempfile

with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("from the host\n")
machine.copy_from_host(f.name, "/root/copied/host.txt")
t.assertEqual(machine.succeed("cat /root/copied/host.txt"), "from the host\n")
machine.succeed("mkdir -p /root/report && echo 'from the guest' > /root/report/result.txt")
machine.copy_from_machine("/root/report", "collected")
with open(os.path.join(driver.out_dir, "collected", "report", "result.txt")) as copied:
    t.assertEqual(copied.read(), "from the guest\n")

shot = machine.screenshot("screen")
with open(shot, "rb") as png:
    t.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")
t.assertIn("Linux version", machine.get_console_log())
