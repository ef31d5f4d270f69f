# One machine: commands, units, files and the console, as in a NixOS test.
machine.wait_for_unit("multi-user.target")

with subtest("commands give their exact output and status"):
    t.assertEqual(machine.succeed("echo hello"), "hello\n")
    status, out = machine.execute("echo partial; exit 3")
    t.assertEqual((status, out), (3, "partial\n"))
    machine.fail("false")

with subtest("units and files"):
    machine.succeed("systemctl start nginx")
    machine.wait_for_unit("nginx.service")
    machine.wait_for_open_port(80)
    machine.succeed("touch /tmp/flag")
    machine.wait_for_file("/tmp/flag")

with subtest("the console shows the boot"):
    machine.wait_for_console_text("Linux version")

machine.shutdown()
