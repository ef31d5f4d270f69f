#!/usr/bin/env bash
# Builds Nix 2.26.3 from Debian trixie's source package on Debian 12 (bookworm) and installs it into a cached
# prefix outside the repo, with the headers, shared libraries and pkg-config files the plugin compiles against.
#
#   prefix=$(tests/env/nix.sh)        # builds if needed; the prefix is the last line of stdout, logs go to stderr
#   tests/env/nix.sh --print-prefix   # the prefix it would use, without building
#
# The prefix is ${TESTRIG_DEV_CACHE:-/var/cache/testrig-dev}/nix-2.26.3-<hash>, where <hash> covers every
# non-comment line of this script (versions, checksums, fixes and options all live here), so a change to any of
# them builds a new prefix and editing a comment does not. The build runs in <cache>/build/, installs into
# <prefix>.tmp and is renamed to <prefix> once it has passed its checks, so an existing prefix is always complete.
# Full logs stay in <cache>/logs/nix-2.26.3-<hash>/.
#
# The Nix uses /nix/store and /nix/var as root, single-user, no daemon. Its nix.conf is <prefix>/etc/nix/nix.conf
# (no binary cache: none is reachable here; no sandbox; no build users).
#
# Why each fix (machines.md, section "Nix"): bookworm's meson 1.0 is too old (meson and ninja come from PyPI);
# bookworm has no libgit2 1.9 (built static from the source vendored in the libgit2-sys crate, and its .pc file
# names the private dependencies a static library needs); bookworm's bdwgc 8.2.2 headers declare three allocator
# specialisations without `public:` (patched copy in include/testrig-gc, named by the prefix's own bdw-gc.pc);
# boost 1.74's small_vector is not a contiguous range for std::span (one line in eval.cc); libseccomp is too old
# (seccomp sandboxing disabled).
#
# Measured on a 2-core bookworm machine while other builds ran beside it (load 4 to 6), from nothing (2026-11-22):
#   Debian packages (already installed)      0 s
#   trixie source + Debian patches           2 s
#   meson + ninja venv from PyPI             7 s
#   libgit2 1.9 (cmake, -j2)                35 s
#   meson setup                              4 s
#   compile (-j2, 312 steps)              1991 s
#   install + checks                         1 s
#   total                                 2041 s (34 min)
# A second run with the prefix present: about 0.03 s. The prefix takes 28 MB.
set -euo pipefail

nix_version=2.26.3
deb_version=2.26.3+dfsg-1
libgit2_crate=0.18.2+1.9.1
libgit2_crate_sha256=1c42fe03df2bd3c53a3a9c7317ad91d80c81cd1fb0caec8d7cc4cd2bfa10c222
meson_version=1.7.2
ninja_version=1.11.1.4
mirror=http://deb.debian.org/debian
jobs=2

say() { echo "testrig bootstrap: $*" >&2; }
die() { say "$*"; exit 1; }

self=$(readlink -f "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$self")/../.." && pwd)
cache=${TESTRIG_DEV_CACHE:-/var/cache/testrig-dev}
key=$(grep -v '^[[:space:]]*#' "$self" | sha256sum | cut -c1-10)
name=nix-$nix_version-$key
prefix=$cache/$name

case "${1:-}" in
  --print-prefix) echo "$prefix"; exit 0 ;;
  "") ;;
  *) die "unknown argument '$1' (usage: nix.sh [--print-prefix])" ;;
esac

if [ -x "$prefix/bin/nix" ]; then
  echo "$prefix"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "nix.sh must run as root (it installs Debian packages and uses /nix as a root store)"
mkdir -p "$cache/build" "$cache/logs" || die "cannot create the cache directory $cache"

# One build at a time per prefix; a second caller waits and then finds the prefix done.
exec 9>"$cache/$name.lock"
if ! flock -n 9; then
  say "another nix.sh is building $prefix; waiting for it"
  flock 9
fi
if [ -x "$prefix/bin/nix" ]; then
  echo "$prefix"
  exit 0
fi

scratch=$cache/build/$name
logs=$cache/logs/$name
rm -rf "$scratch" "$prefix.tmp"
mkdir -p "$scratch" "$logs"
deps=$scratch/deps # libgit2 and the patched gc headers, laid out like the final prefix
started=$SECONDS

# step NAME FUNCTION: runs FUNCTION with all output in $logs/NAME.log, timed; a failure names the step and its log.
step() {
  local name=$1 fn=$2 t0=$SECONDS
  say "$name..."
  # Not under `if`/`||`: bash ignores `set -e` inside a function called in a condition.
  local rc
  set +e
  (set -euo pipefail; "$fn") >"$logs/$name.log" 2>&1
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    tail -n 15 "$logs/$name.log" | sed 's/^/    /' >&2
    die "$name failed, see $logs/$name.log"
  fi
  say "$name done in $((SECONDS - t0)) s"
}

debian_packages() {
  "$repo/tests/env/packages.sh"
}

# Trixie's source package through a private source list and list directory: the system's apt sources and lists
# are never touched, so there is no entry to remove afterwards. dpkg-source applies the Debian patches.
fetch_source() {
  local apt=$scratch/apt
  mkdir -p "$apt/lists/partial" "$apt/src"
  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$apt/sources.list"
  local opts=(-q -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
    -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update
  (cd "$apt/src" && apt-get "${opts[@]}" source --download-only "nix=$deb_version")
  dpkg-source -x "$apt/src/nix_$deb_version.dsc" "$scratch/src"
  # boost 1.74: small_vector does not convert to std::span.
  sed -i 's/state.callFunction(vFun, vArgs, v, pos);/state.callFunction(vFun, std::span<Value *>(vArgs.data(), vArgs.size()), v, pos);/' \
    "$scratch/src/src/libexpr/eval.cc"
  grep -q 'std::span<Value \*>(vArgs.data(), vArgs.size())' "$scratch/src/src/libexpr/eval.cc"
}

build_tools() {
  /usr/bin/python3 -m venv "$scratch/venv"
  "$scratch/venv/bin/pip" install --disable-pip-version-check -q "meson==$meson_version" "ninja==$ninja_version"
  "$scratch/venv/bin/meson" --version
}

libgit2() {
  local crate=$scratch/libgit2-sys.crate
  curl -fsSL --retry 3 -o "$crate" "https://static.crates.io/crates/libgit2-sys/libgit2-sys-$libgit2_crate.crate"
  echo "$libgit2_crate_sha256  $crate" | sha256sum -c -
  tar -xzf "$crate" -C "$scratch"
  local src=$scratch/libgit2-sys-$libgit2_crate/libgit2
  cmake -S "$src" -B "$scratch/libgit2-build" -G Ninja -DCMAKE_MAKE_PROGRAM="$scratch/venv/bin/ninja" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$deps" -DCMAKE_INSTALL_LIBDIR=lib \
    -DBUILD_SHARED_LIBS=OFF -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DBUILD_TESTS=OFF -DBUILD_CLI=OFF \
    -DUSE_SSH=OFF -DUSE_HTTPS=OpenSSL -DREGEX_BACKEND=builtin -DUSE_HTTP_PARSER=builtin
  "$scratch/venv/bin/ninja" -C "$scratch/libgit2-build" -j"$jobs" install
  # A static libgit2 needs its private dependencies on the link line, and meson does not add them.
  cat >"$deps/lib/pkgconfig/libgit2.pc" <<'EOF'
prefix=${pcfiledir}/../..
libdir=${prefix}/lib
includedir=${prefix}/include

Name: libgit2
Description: The git library, take 2 (static, built by testrig's nix.sh)
Version: 1.9
Requires: openssl zlib
Libs: -L${libdir} -lgit2 -lrt
Cflags: -I${includedir}
EOF
}

# bdwgc 8.2.2 declares gc_allocator<void>, gc_allocator_ignore_off_page<void> and traceable_allocator<void> with
# private members; C++20 code using them fails. A patched copy of the headers, found through our own bdw-gc.pc.
gc_headers() {
  local inc=$deps/include/testrig-gc
  mkdir -p "$inc" "$deps/lib/pkgconfig"
  cp -r /usr/include/gc /usr/include/gc.h /usr/include/gc_cpp.h "$inc/"
  sed -i -E 's/^(class (gc_allocator|gc_allocator_ignore_off_page|traceable_allocator)<void> \{)$/\1 public:/' \
    "$inc/gc/gc_allocator.h"
  [ "$(grep -c '<void> { public:' "$inc/gc/gc_allocator.h")" = 3 ]
  cat >"$deps/lib/pkgconfig/bdw-gc.pc" <<'EOF'
prefix=${pcfiledir}/../..
includedir=${prefix}/include/testrig-gc

Name: Boehm-Demers-Weiser Conservative Garbage Collector
Description: bdwgc 8.2.2 from Debian with headers patched by testrig's nix.sh
Version: 8.2.2
Libs: -lgc -lpthread -ldl
Cflags: -I${includedir}
EOF
}

meson_setup() {
  PKG_CONFIG_PATH=$deps/lib/pkgconfig "$scratch/venv/bin/meson" setup "$scratch/build" "$scratch/src" \
    --prefix="$prefix" --libdir=lib --sysconfdir="$prefix/etc" --localstatedir=/nix/var --buildtype=release \
    -Dcpp_link_args="-Wl,-rpath,\$ORIGIN/../lib" \
    -Dunit-tests=false -Dbindings=false -Ddoc-gen=false -Ddefault_library=shared \
    -Dlibstore:seccomp-sandboxing=disabled -Dlibstore:sandbox-shell=/bin/sh \
    -Dlibexpr:gc=enabled -Dlibcmd:readline-flavor=readline
}

compile() {
  PATH=$scratch/venv/bin:$PATH "$scratch/venv/bin/meson" compile -C "$scratch/build" -j "$jobs"
}

install_prefix() {
  PATH=$scratch/venv/bin:$PATH "$scratch/venv/bin/meson" install -C "$scratch/build" --destdir "$scratch/destdir"
  mv "$scratch/destdir$prefix" "$prefix.tmp"
  # libgit2 (static, so only for pkg-config: nix-fetchers.pc names it) and the patched gc headers.
  cp -a "$deps/include/." "$prefix.tmp/include/"
  cp -a "$deps/lib/." "$prefix.tmp/lib/"
  mkdir -p "$prefix.tmp/etc/nix"
  cat >"$prefix.tmp/etc/nix/nix.conf" <<'EOF'
# Written by testrig's tests/env/nix.sh: single-user root Nix on /nix/store, no binary cache, no sandbox.
experimental-features = nix-command flakes
substituters =
build-users-group =
sandbox = false
flake-registry =
max-jobs = auto
EOF
}

# Checks on the staged prefix (NIX_CONF_DIR points at its nix.conf: the compiled-in one is the final path).
check() {
  local nix=$prefix.tmp/bin
  export NIX_CONF_DIR=$prefix.tmp/etc/nix
  "$nix/nix" --version | tee /dev/stderr | grep -qx "nix (Nix) $nix_version"
  [ "$("$nix/nix" eval --expr '1+1')" = 2 ]
  local drv='derivation { name = "testrig-check"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo hi > $out" ]; }'
  local out
  out=$("$nix/nix" build --impure --no-link --print-out-paths --expr "$drv")
  [ "$(cat "$out")" = hi ]
  local d
  d=$("$nix/nix-instantiate" --expr "$drv")
  [ "$("$nix/nix-store" --realise "$d")" = "$out" ]
  "$nix/nix" config show | grep -E '^(experimental-features|substituters|sandbox|build-users-group) ='
  pkg-config --exists --print-errors --with-path="$prefix.tmp/lib/pkgconfig" nix-expr nix-cmd
}

step debian-packages debian_packages
step source fetch_source
step build-tools build_tools
step libgit2 libgit2
step gc-headers gc_headers
step meson-setup meson_setup
step compile compile
step install install_prefix
step check check
mv "$prefix.tmp" "$prefix"
rm -rf "$scratch"
say "Nix $nix_version ready in $prefix ($((SECONDS - started)) s)"
echo "$prefix"
