#!/usr/bin/env bash
# Installs the Debian packages testrig's build, test guest and tests need on a Debian 12 (bookworm) machine.
# Idempotent: a second run with everything present returns in about a second.
#
# Why backports: the machine image ships qemu-utils 10.0 from bookworm-backports, which Breaks bookworm's own
# qemu-system-x86 7.2, so QEMU must come from backports too. The backports list is used through a private
# sourcelist so the system's own apt sources stay untouched.
set -euo pipefail

die() { echo "testrig bootstrap: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "packages.sh must run as root (it calls apt-get)"
command -v apt-get >/dev/null || die "apt-get not found: this bootstrap supports Debian 12 (bookworm) only"

# Packages from bookworm itself.
base_pkgs=(
  # VMs and their plumbing
  vde2 socat busybox-static kmod cpio xz-utils zstd e2fsprogs debootstrap
  # test runner and tools
  python3 jq procps psmisc util-linux iproute2 netcat-openbsd clang-format hyperfine
  # OCR of a machine's screen (get_screen_text, wait_for_text), as nixpkgs' enableOCR
  tesseract-ocr imagemagick
  # Nix build dependencies (machines.md)
  bison flex cmake ninja-build pkg-config libboost-dev libboost-context-dev libboost-coroutine-dev
  libboost-container-dev libarchive-dev libbrotli-dev libbsd-dev libbz2-dev libcpuid-dev
  libcurl4-openssl-dev libgc-dev libsodium-dev libsqlite3-dev libssl-dev libtoml11-dev libreadline-dev
  nlohmann-json3-dev libedit-dev libseccomp-dev dpkg-dev quilt python3-venv
  # the compile check of the plugin against newer Nix headers (tests/suite.d/plugin-newer-nix): they need C++23
  # library features GCC 12's libstdc++ lacks
  clang-19 libc++-19-dev libc++abi-19-dev
)
# Packages from bookworm-backports.
backports_pkgs=(qemu-system-x86)

missing=()
for p in "${base_pkgs[@]}" "${backports_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "testrig bootstrap: installing Debian packages: ${missing[*]}" >&2

bp_list=/etc/apt/testrig-backports.list
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
echo "deb $mirror bookworm-backports main" >"$bp_list"

export DEBIAN_FRONTEND=noninteractive
apt_quiet=(-o Dpkg::Use-Pty=0 -q -y)
# The system's lists, then the same plus backports (the backports entry lives in a file of its own, named only on
# these command lines, so the system's sources stay as they were).
apt-get "${apt_quiet[@]}" update >/dev/null || die "apt-get update failed: are Debian's package mirrors reachable?"
apt-get "${apt_quiet[@]}" -o Dir::Etc::sourcelist="$bp_list" \
  -o APT::Get::List-Cleanup=0 update >/dev/null || die "apt-get update of bookworm-backports failed"

apt-get "${apt_quiet[@]}" install --no-install-recommends "${base_pkgs[@]}" >/dev/null \
  || die "installing bookworm packages failed: ${base_pkgs[*]}"
apt-get "${apt_quiet[@]}" -o Dir::Etc::sourcelist="$bp_list" \
  -o APT::Get::List-Cleanup=0 -t bookworm-backports install --no-install-recommends "${backports_pkgs[@]}" >/dev/null \
  || die "installing ${backports_pkgs[*]} from bookworm-backports failed"
echo "testrig bootstrap: Debian packages installed" >&2
