# The repository's files a Nix build of testrig needs, for nix/package.nix and nix/plugin.nix: the Cargo workspace
# (both members, since cargo reads every member's manifest) and the Nix files the runner embeds with include_str!
# (plan.nix, the fallback extractor; python-env.nix), plus `extra`.
{
  lib,
  extra ? [ ],
}:
lib.fileset.toSource {
  root = ../.;
  fileset = lib.fileset.unions (
    [
      ../Cargo.toml
      ../Cargo.lock
      ../cxx-bridge
      ../runner
      ./plan.nix
      ./python-env.nix
    ]
    ++ extra
  );
}
