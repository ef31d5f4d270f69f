# Two machines on vlan 1: the server runs nginx (a real systemd unit), the client reaches it by name.
start_all()

server.wait_for_unit("nginx.service")
server.wait_for_open_port(80)
server.succeed("echo 'hello from server' > /var/www/html/index.html")

client.wait_for_unit("multi-user.target")

with subtest("client reaches the server by name over vlan 1"):
    client.succeed("ping -c 1 -W 5 server")
    t.assertEqual(client.succeed("curl --fail --silent http://server/"), "hello from server\n")

with subtest("the server saw the client's vlan address"):
    access_log = server.succeed("cat /var/log/nginx/access.log")
    # The client's vlan 1 address, IPv4 or IPv6 (nodes get both, as NixOS nodes do).
    t.assertRegex(access_log, r"^(192\.168\.1\.1|2001:db8:1::1) ")
