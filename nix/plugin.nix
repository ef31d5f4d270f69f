# testrig's Nix plugin (builtins.nixosTestPlan), lib/libtestrig.so, built against `nix` (by default the nixpkgs
# one; a plugin only loads into the Nix version it was built for, which it checks when loaded). UNTESTED HERE: no
# binary cache is reachable on the development machines, so this follows plugin/build.sh (which is tested, against
# Nix 2.26.3) and nixpkgs' documentation, without having been built. The C++ shim is written against the Nix 2.26
# C++ API; what changed up to Nix 2.35 and master is told apart in plugin/nix-compat.hh (README.md, "Nix versions").
#
# One cargo build of the Rust half (the cxx-bridge staticlib, which also generates the bridge header), then one
# compiler call for the C++ shim, as in plugin/build.sh.
{
  lib,
  rustPlatform,
  pkg-config,
  nix,
  boost,
  nlohmann_json,
}:
rustPlatform.buildRustPackage {
  pname = "testrig-plugin";
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;

  src = import ./source.nix {
    inherit lib;
    extra = [ ../plugin ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [
    "-p"
    "testrig-bridge"
  ];
  doCheck = false;

  nativeBuildInputs = [ pkg-config ];
  buildInputs = [
    nix
    boost
    nlohmann_json
  ];

  postBuild = ''
    staticlib=$(find target -name libtestrig_bridge.a -path '*release*' | head -n 1)
    header=$(find target -path '*cxxbridge/testrig-bridge/src/bridge.rs.h' | head -n 1)
    if [ -z "$staticlib" ] || [ -z "$header" ]; then
      echo "testrig-plugin: cargo produced no staticlib or bridge header" >&2
      exit 1
    fi
    # -std=c++20 before pkg-config's flags: a newer Nix asks for c++23 there, and the last one wins.
    $CXX -std=c++20 -O2 -fPIC -shared -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
      $(pkg-config --cflags nix-expr nix-store nix-util nix-main) -I"''${header%/testrig-bridge/src/bridge.rs.h}" \
      -DTESTRIG_BUILT_FOR_NIX="\"$(pkg-config --modversion nix-expr)\"" \
      -o libtestrig.so plugin/testrig-plugin.cc "$staticlib" \
      $(pkg-config --libs nix-expr nix-store nix-util nix-main) -lpthread -lm -ldl \
      -Wl,--exclude-libs,ALL -Wl,-z,defs
  '';

  installPhase = ''
    runHook preInstall
    install -Dm755 libtestrig.so $out/lib/libtestrig.so
    runHook postInstall
  '';

  passthru = { inherit nix; };

  meta = {
    description = "Nix plugin adding builtins.nixosTestPlan (testrig's test plans of NixOS tests)";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
  };
}
