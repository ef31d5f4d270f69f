#!/usr/bin/env bash
# Builds the Nix plugin target/plugin/libtestrig.so: the C++ shim (testrig-plugin.cc) against the Nix of
# tests/env/nix.sh (or TESTRIG_NIX_PREFIX), linked with the Rust half (the staticlib of cxx-bridge/).
# Logs go to stderr; the last line of stdout is the plugin's path.
#
#   nix --option plugin-files "$(plugin/build.sh)" eval --expr 'builtins.nixosTestPlan ...'
#
# --exclude-libs,ALL keeps the Rust and cxx symbols of the staticlib private to the plugin, and -z defs makes a
# missing symbol a link error here instead of a dlopen error inside nix.
set -euo pipefail

say() { echo "testrig plugin: $*" >&2; }
die() { say "$*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${TESTRIG_NIX_PREFIX:-$("$repo/tests/env/nix.sh" | tail -n 1)}
[ -x "$prefix/bin/nix" ] || die "no Nix in $prefix (tests/env/nix.sh builds one)"
out_dir=$repo/target/plugin
out=${TESTRIG_PLUGIN_OUT:-$out_dir/libtestrig.so}
extra_flags=${TESTRIG_PLUGIN_CXXFLAGS:-} # for tests, e.g. -DTESTRIG_BUILT_FOR_NIX='"2.0.0"'
source=$repo/plugin/testrig-plugin.cc
compat=$repo/plugin/nix-compat.hh
mkdir -p "$(dirname "$out")"

say "building the Rust bridge (cargo build -p testrig-bridge --release)"
(cd "$repo" && cargo build -q -p testrig-bridge --release >&2) || die "cargo build of cxx-bridge failed"
staticlib=$repo/target/release/libtestrig_bridge.a
bridge_header=$repo/target/cxxbridge/testrig-bridge/src/bridge.rs.h

if [ -z "$extra_flags" ] && [ -e "$out" ] && [ "$out" -nt "$source" ] && [ "$out" -nt "$compat" ] && [ "$out" -nt "$staticlib" ] && [ "$out" -nt "$prefix/bin/nix" ] \
  && [ "$out" -nt "$0" ]; then
  say "$out is up to date"
  echo "$out"
  exit 0
fi

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
nix_pkgs=(nix-expr nix-store nix-util nix-main)
cflags=$(pkg-config --cflags "${nix_pkgs[@]}") || die "pkg-config finds no Nix in $prefix/lib/pkgconfig"
libs=$(pkg-config --libs "${nix_pkgs[@]}")
# The version the plugin checks for when loaded (Nix 2.28 and later have it in no header).
nix_version=$(pkg-config --modversion nix-expr)
version_flag=-DTESTRIG_BUILT_FOR_NIX=\"$nix_version\"
[[ $extra_flags == *TESTRIG_BUILT_FOR_NIX* ]] && version_flag=
[ -e "$bridge_header" ] || die "cxx did not generate $bridge_header"

say "compiling $source against Nix $nix_version"
# shellcheck disable=SC2086 # pkg-config output is a list of flags
"${CXX:-c++}" -std=c++20 -O2 -g -fPIC -shared -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
  $cflags -I"$repo/target/cxxbridge" $version_flag $extra_flags \
  -o "$out.tmp" "$source" \
  "$staticlib" $libs -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc \
  -Wl,--exclude-libs,ALL -Wl,-z,defs -Wl,-rpath,"$prefix/lib" \
  || die "compiling the plugin failed"
mv "$out.tmp" "$out"
say "built $out"
echo "$out"
