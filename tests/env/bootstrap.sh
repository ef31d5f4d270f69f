#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs before testrig's examples and tests run: Debian packages (QEMU from
# bookworm-backports, VDE, Nix's build dependencies), the Debian test guest, and Nix 2.26.3 built from source.
# Heavy artefacts are cached outside the repo under ${TESTRIG_DEV_CACHE:-/var/cache/testrig-dev}, keyed by their
# inputs, so a second run takes seconds.
#
#   tests/env/bootstrap.sh            packages, guest and Nix
#   tests/env/bootstrap.sh --no-nix   packages and guest only (enough for plan files; Nix is for the plugin)
#
# Measured on a fresh 2-core machine: packages ~40 s, guest ~3 min, Nix ~30 min; warm: about 1 s.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

with_nix=1
for arg in "$@"; do
  case $arg in
    --no-nix) with_nix=0 ;;
    *) echo "bootstrap: unknown argument $arg" >&2; exit 2 ;;
  esac
done

step() { printf 'bootstrap: %s\n' "$*" >&2; }

step "Debian packages"
"$here/packages.sh"

# The guest and Nix are independent; build them side by side (the guest is mostly downloads and debootstrap, Nix
# is compilation), and report each failure by name.
step "test guest (tests/guest/build.sh)"
guest_log=$(mktemp)
"$repo/tests/guest/build.sh" >"$guest_log" 2>&1 &
guest_pid=$!

if [[ $with_nix == 1 ]]; then
  step "Nix 2.26.3 (tests/env/nix.sh)"
  "$here/nix.sh" >/dev/null || { echo "bootstrap: building Nix failed (see the message above)" >&2; kill "$guest_pid" 2>/dev/null; exit 1; }
fi

if ! wait "$guest_pid"; then
  cat "$guest_log" >&2
  echo "bootstrap: building the test guest failed (see above)" >&2
  exit 1
fi
rm -f "$guest_log"
step "ready: guest $("$repo/tests/guest/build.sh" --print-dir)"
