# Fails on purpose, on line 4: testrig must exit 1 and name the machine, the command and this line.
machine.wait_for_unit("multi-user.target")
machine.succeed("true")
machine.succeed("test -e /etc/this-file-does-not-exist")
