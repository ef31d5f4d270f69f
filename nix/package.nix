# The runner, `testrig`, for nixpkgs' callPackage (see flake.nix). UNTESTED HERE: the machines testrig is developed
# on cannot reach a binary cache, so this was written from nixpkgs' documentation of rustPlatform.buildRustPackage
# and makeWrapper, not built.
#
# The binary starts python3 (the test script), vde_switch (vlans), cp and bash at run time, so the wrapper puts
# them on PATH. With a plugin, TESTRIG_PLUGIN and TESTRIG_NIX default to it and to the Nix it was built for (a
# plugin only loads into that Nix); both can be overridden from the environment.
{
  lib,
  rustPlatform,
  makeWrapper,
  python3,
  vde2,
  coreutils,
  bash,
  testrig-plugin ? null,
}:
rustPlatform.buildRustPackage {
  pname = "testrig";
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;

  src = import ./source.nix { inherit lib; };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [
    "-p"
    "testrig"
  ];
  # The suite (tests/run-all) boots VMs and needs the repository's test guest; it does not run in the sandbox.
  doCheck = false;

  nativeBuildInputs = [ makeWrapper ];

  postInstall = ''
    wrapProgram $out/bin/testrig \
      --prefix PATH : ${
        lib.makeBinPath [
          python3
          vde2
          coreutils
          bash
        ]
      } \
      ${lib.optionalString (testrig-plugin != null) ''
        --set-default TESTRIG_PLUGIN ${testrig-plugin}/lib/libtestrig.so \
        --set-default TESTRIG_NIX ${testrig-plugin.nix}/bin/nix
      ''}
  '';

  passthru.plugin = testrig-plugin;

  meta = {
    description = "Runs NixOS VM tests outside the Nix sandbox, fast, with a result cache keyed on derivation hashes";
    mainProgram = "testrig";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  };
}
