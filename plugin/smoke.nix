# Small hand-made values for plugin/smoke.sh: just enough attribute structure of each test generation to exercise the
# builtin's walking and error paths. Not fixtures of real nixpkgs results (those live under tests/); the VMs here are
# derivations whose builder is /bin/sh, so the plugin has real derivation paths and string context to carry.
let
  system = "x86_64-linux";
  vm =
    name:
    derivation {
      name = "nixos-vm";
      inherit system;
      builder = "/bin/sh";
      args = [
        "-c"
        "mkdir -p $out/bin; echo 'exec true' > $out/bin/run-${name}-vm"
      ];
    }
    // {
      meta.mainProgram = "run-${name}-vm";
    };
  node = name: extra: {
    system.build.vm = vm name;
    virtualisation = {
      memorySize = 512;
      cores = 1;
      vlans = [ 1 ];
    } // extra;
  };
  run =
    name: passthru:
    derivation {
      name = "vm-test-run-${name}";
      inherit system;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo > $out"
      ];
    }
    // passthru;

  # runTest since nixpkgs 26.05.
  withDriverConfiguration =
    let
      config = rec {
        name = "login";
        nodes = {
          server = node "server" { vlans = [ 1 2 ]; };
          client = node "client" { };
        };
        testScriptString = ''
          start_all()
          server.succeed("${vm "tool"}/bin/run-tool-vm")
        '';
        globalTimeout = 600;
        driverConfiguration = {
          vms = builtins.mapAttrs (n: v: {
            name = n;
            start_script = "${v.system.build.vm}/bin/${v.system.build.vm.meta.mainProgram}";
          }) nodes;
          containers = { };
          vlans = [ 1 2 ];
          global_timeout = globalTimeout;
          enable_ssh_backdoor = false;
          test_script = builtins.toFile "test-script" "start_all()";
        };
      };
    in
    run "login" {
      inherit config;
      inherit (config) nodes;
    };

  # runTest before 26.05: no driverConfiguration; testScript as a function of the nodes.
  runTest =
    let
      config = rec {
        name = "web";
        nodes.machine = node "machine" { };
        testScript = { nodes, ... }: "machine.succeed('true') # ${toString nodes.machine.virtualisation.memorySize}";
        testScriptString = testScript { inherit nodes; };
      };
    in
    run "web" { inherit config; };

  # make-test-python.nix (nixpkgs 22.05 and older).
  legacy = run "old" {
    nodes.machine = {
      config = node "machine" { };
    };
    driver = {
      testName = "old";
      testScript = "machine.succeed('true')";
    };
  };

  brokenNode = run "broken" {
    config = {
      name = "broken";
      nodes.server = throw "the node's configuration does not evaluate";
      testScriptString = "start_all()";
    };
  };
in
{
  inherit
    withDriverConfiguration
    runTest
    legacy
    brokenNode
    ;
  checks = {
    inherit withDriverConfiguration runTest legacy;
    fmt = derivation {
      name = "fmt";
      inherit system;
      builder = "/bin/sh";
      args = [
        "-c"
        "echo > $out"
      ];
    };
    answer = 42;
  };
}
