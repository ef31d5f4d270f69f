# testrig's Nix library (flake output `lib`). UNTESTED HERE against nixpkgs (no binary cache on the development
# machines); `planOf` and `mkCheck`'s plan are tested through nix/plan.nix on tests/fixtures.
#
#   apps.${system}.test = testrig.lib.mkTestApp { inherit pkgs; flake = self; };
#     `nix run .#test -- --rerun` runs the flake's checks.${system} through testrig (outside the sandbox, with
#     its result cache); attributes that are not NixOS tests are skipped.
#
#   checks.${system} = testrig.lib.mkChecks { inherit pkgs; } { inherit myTest otherTest; };
#   checks.${system}.myTest = testrig.lib.mkCheck { inherit pkgs; } myTest;
#     the same tests as derivations for `nix flake check`, run by testrig inside the sandbox instead of nixpkgs'
#     Python driver (a drop-in: same test script API, same `vm-test-run-<name>` output with the log and JUnit).
#     The plan comes from nix/plan.nix (a plugin cannot be loaded into the evaluating Nix from a flake), and the
#     check depends on the test's VMs through the plan's string context, so they are built first.
{ self }:
let
  planNix = import ./plan.nix;
  withPython = import ./python-env.nix;
  testrigFor = pkgs: self.packages.${pkgs.stdenv.hostPlatform.system}.testrig;
in
rec {
  # The plan of a test, or `{ plans; skipped; }` of a set of tests, without the plugin: like builtins.nixosTestPlan.
  planOf = test: planNix.auto test;

  mkTestApp =
    {
      pkgs,
      flake,
      attr ? "checks.${pkgs.stdenv.hostPlatform.system}",
      testrig ? testrigFor pkgs,
    }:
    {
      type = "app";
      program = toString (
        pkgs.writeShellScript "testrig-test" ''
          # Extra arguments (--rerun, -K, -v, ...) go to testrig run.
          exec ${testrig}/bin/testrig run "$@" ${pkgs.lib.escapeShellArg "path:${flake}#${attr}"}
        ''
      );
      meta.description = "Run the NixOS tests of ${attr} with testrig";
    };

  mkCheck =
    {
      pkgs,
      testrig ? testrigFor pkgs,
    }:
    test:
    let
      # With the Python of the test's extraPythonPackages: the plan file's string context makes the build
      # depend on it (and on the VMs), so Nix builds it first.
      plan = withPython test (planNix.one test);
      planFile = pkgs.writeText "testrig-plan-${plan.name}.json" (builtins.toJSON plan);
      inherit (pkgs.stdenv.hostPlatform) isLinux;
    in
    pkgs.runCommand "vm-test-run-${plan.name}"
      {
        requiredSystemFeatures = [ "nixos-test" ] ++ pkgs.lib.optional isLinux "kvm";
        nativeBuildInputs = [ testrig ];
        passthru = {
          inherit plan test;
        };
        meta = test.meta or { };
      }
      ''
        mkdir -p $out
        # No result cache in the sandbox: Nix's own output is the cache here.
        export HOME=$TMPDIR XDG_RUNTIME_DIR=$TMPDIR
        testrig run --no-cache -o $out --junit-xml $out/junit.xml ${planFile}
      '';

  # mkCheck for every NixOS test of a set (such as checks.${system}); other attributes are left out.
  mkChecks =
    args: tests:
    let
      found = (planNix.set tests).plans;
    in
    builtins.mapAttrs (name: _: mkCheck args tests.${name}) found;
}
