# testrig: NixOS VM tests outside the Nix sandbox, fast, with a result cache. See README.md.
#
# UNTESTED HERE: the development machines reach no binary cache, so this flake has never been evaluated against
# nixpkgs. It was written from nixpkgs' documentation (buildRustPackage, makeWrapper, writeShellScript, flake
# outputs) and kept simple; nix/plan.nix and the plugin it packages are tested (tests/suite.d).
{
  description = "testrig: run NixOS VM tests fast, outside the sandbox, with a result cache keyed on derivation hashes";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = final: prev: {
        testrig-plugin = final.callPackage ./nix/plugin.nix { };
        testrig = final.callPackage ./nix/package.nix { inherit (final) testrig-plugin; };
      };

      packages = forAllSystems (
        pkgs:
        let
          testrig-plugin = pkgs.callPackage ./nix/plugin.nix { };
        in
        {
          inherit testrig-plugin;
          testrig = pkgs.callPackage ./nix/package.nix { inherit testrig-plugin; };
          # The runner alone, evaluating with nix/plan.nix and whatever `nix` is on PATH.
          testrig-without-plugin = pkgs.callPackage ./nix/package.nix { };
          default = self.packages.${pkgs.stdenv.hostPlatform.system}.testrig;
        }
      );

      lib = import ./nix/lib.nix { inherit self; };

      # `nix run .#test -- --rerun`: this flake's checks through testrig (here they are no NixOS tests, so all
      # are skipped; in a user's flake, `testrig.lib.mkTestApp { inherit pkgs; flake = self; }`).
      apps = forAllSystems (pkgs: {
        test = self.lib.mkTestApp {
          inherit pkgs;
          flake = self;
        };
        default = {
          type = "app";
          program = "${self.packages.${pkgs.stdenv.hostPlatform.system}.testrig}/bin/testrig";
          meta.description = "testrig";
        };
      });

      checks = forAllSystems (
        pkgs:
        let
          packages = self.packages.${pkgs.stdenv.hostPlatform.system};
          # The fixtures' plans through nix/plan.nix, evaluated only (the guest dir is not read to evaluate).
          fixtures = import ./tests/fixtures {
            guestDir = "/nonexistent-testrig-guest";
            system = pkgs.stdenv.hostPlatform.system;
          };
          plans = builtins.mapAttrs (_: self.lib.planOf) {
            inherit (fixtures)
              one-node
              two-node
              two-node-25_11
              two-node-legacy
              script-function
              checks
              ;
          };
        in
        {
          inherit (packages) testrig testrig-plugin;
          plan-nix = pkgs.writeText "testrig-fixture-plans.json" (
            builtins.unsafeDiscardStringContext (builtins.toJSON plans)
          );
        }
      );
    };
}
