#!/usr/bin/env bash
# Builds the testrig test guest from Debian's packages: a Debian kernel booted as an uncompressed vmlinux (PVH),
# a busybox initramfs that loads the virtio drivers and switch_roots into systemd, and a read-only raw ext4 root
# image with the NixOS guest protocol baked in (backdoor.service, testrig-node.service; see README.md).
#
#   tests/guest/build.sh              build if missing; the last stdout line is the guest dir
#   tests/guest/build.sh --print-dir  print the guest dir without building
#
# The guest dir is ${TESTRIG_DEV_CACHE:-/var/cache/testrig-dev}/guest-<hash>, where <hash> covers this script,
# packages.txt, modules.txt, initramfs-init and overlay/. It holds vmlinux, initrd, rootfs.img (mode 0444; VMs use
# a qcow2 overlay on it) and manifest.txt (package versions, sizes, build time). It is built in <dir>.tmp and
# renamed when complete, under a lock, so concurrent builds are safe and a complete dir is never rebuilt.
# The debootstrap result is cached as well (debootstrap-<hash of packages.txt and this script>.tar), so changing
# the overlay or the modules costs a rebuild of about 20 s, not 2 minutes.
#
# Measured on the 2-core Debian 12 machine of machines.md (2026-11-22), other work running beside:
#   from nothing (empty cache): 104 to 146 s (kernel download 1 s, vmlinux and modules 10 s, debootstrap 70 to
#   110 s, configuration 5 s, mkfs.ext4 3 s, removing the 700 MB work tree 5 to 25 s);
#   with the debootstrap tarball cached (a change to the overlay, modules or initramfs): 20 to 35 s;
#   guest dir present (and --print-dir): 0.04 s.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${TESTRIG_DEV_CACHE:-/var/cache/testrig-dev}
suite=bookworm
kernel_meta=linux-image-amd64
image_size=2G # virtual size of rootfs.img (sparse); the guest's / has this much room

log() { echo "guest build: $*" >&2; }
die() { echo "guest build: error: $*" >&2; exit 1; }

# --- the cache key: every input that changes the guest
# Only the executable bit of a mode counts, and sorting is bytewise: a copy of this directory in the Nix store
# (modes 0444/0555, no locale) hashes the same as the checkout.
inputs_hash() {
  (
    cd "$here"
    export LC_ALL=C
    {
      sha256sum build.sh packages.txt modules.txt initramfs-init
      find overlay -type f -print0 | sort -z | xargs -0 sha256sum
      find overlay -type f -perm -u+x | sort
      find overlay -type l -printf '%p -> %l\n' | sort
    } | sha256sum | cut -c1-12
  )
}
dir="$cache/guest-$(inputs_hash)"

if [[ ${1:-} == --print-dir ]]; then
  echo "$dir"
  exit 0
elif [[ $# -gt 0 ]]; then
  die "usage: build.sh [--print-dir]"
fi
if [[ -f $dir/manifest.txt ]]; then
  echo "$dir"
  exit 0
fi

# --- preflight
[[ $(id -u) == 0 ]] || die "step preflight: building the guest needs root (debootstrap, chroot, mknod)"
for tool in apt-get apt-cache dpkg-deb debootstrap depmod mkfs.ext4 cpio python3 busybox tar; do
  command -v "$tool" >/dev/null || die "step preflight: '$tool' not found; run tests/env/packages.sh"
done
busybox_bin=$(command -v busybox)
file -L "$busybox_bin" 2>/dev/null | grep -q 'statically linked' ||
  ldd "$busybox_bin" 2>&1 | grep -q 'not a dynamic' ||
  die "step preflight: $busybox_bin is not statically linked; install busybox-static"

mkdir -p "$cache"
exec 9>"$dir.lock"
flock 9
if [[ -f $dir/manifest.txt ]]; then # built by someone else while we waited for the lock
  echo "$dir"
  exit 0
fi

tmp="$dir.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/work"
work="$tmp/work"
started=$SECONDS
step() { # NAME: logs the step (and how long the previous one took) and remembers it for error messages
  [[ -z ${current_step:-} ]] || log "  ($((SECONDS - step_started)) s)"
  current_step=$1
  step_started=$SECONDS
  log "$1..."
}
trap 'echo "guest build: error: step \"${current_step:-?}\" failed (see the messages above)" >&2' ERR
# A failed build leaves nothing behind (the kernel tree alone is 430 MB); the lock file stays, it is empty.
trap '[[ -f $dir/manifest.txt ]] || rm -rf "$tmp"' EXIT

# --- kernel
step "download the kernel"
kernel_pkg=$(apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
[[ -n $kernel_pkg ]] || die "step kernel: apt-cache knows no $kernel_meta; run 'apt-get update'"
(cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$kernel_pkg" >&2) ||
  die "step kernel: 'apt-get download $kernel_pkg' failed: is the Debian mirror reachable?"
dpkg-deb -x "$work"/"$kernel_pkg"_*.deb "$work/kernel"
kver=${kernel_pkg#linux-image-}
kernel_version=$(dpkg-deb -f "$work"/"$kernel_pkg"_*.deb Version)

step "extract vmlinux from vmlinuz"
python3 - "$work/kernel/boot/vmlinuz-$kver" "$tmp/vmlinux" <<'EOF'
# A Debian bzImage carries the kernel ELF as an XZ stream; QEMU boots that ELF directly through its PVH note,
# which is 3 to 4 times faster under TCG than letting the bzImage decompress itself.
import lzma, sys
data = open(sys.argv[1], "rb").read()
start = data.find(b"\xfd7zXZ\x00")
if start < 0:
    sys.exit("no XZ payload in " + sys.argv[1])
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
if not elf.startswith(b"\x7fELF"):
    sys.exit("the XZ payload of " + sys.argv[1] + " is not an ELF file")
open(sys.argv[2], "wb").write(elf)
EOF

step "select kernel modules"
kmods=$work/kernel/lib/modules/$kver
depmod -b "$work/kernel" "$kver"
# modules.dep lists every module's full dependency set, dependencies that load first last.
python3 - "$kmods" "$here/modules.txt" "$work/initramfs-modules" "$work/rootfs-modules" <<'EOF'
import os, sys
kmods, spec, out_initramfs, out_rootfs = sys.argv[1:]
deps = {}
for line in open(os.path.join(kmods, "modules.dep")):
    mod, _, rest = line.partition(":")
    deps[mod] = rest.split()
def need(path):
    if path not in deps:
        sys.exit(f"modules.txt names {path}, which the kernel package does not have")
    return path
initramfs, rootfs = [], set()
for line in open(spec):
    line = line.split("#", 1)[0].split()
    if not line:
        continue
    kind, rel = line
    path = "kernel/" + rel
    if kind == "initramfs":
        for dep in reversed(deps[need(path)]):
            if dep not in initramfs:
                initramfs.append(dep)
        if path not in initramfs:
            initramfs.append(path)
    elif kind == "rootfs":
        chosen = [m for m in deps if m == path or m.startswith(path.rstrip("/") + "/")]
        if not chosen:
            sys.exit(f"modules.txt names {rel}, which matches no module")
        for m in chosen:
            rootfs.add(m)
            rootfs.update(deps[m])
    else:
        sys.exit(f"modules.txt: unknown kind {kind!r}")
rootfs.update(initramfs)
open(out_initramfs, "w").write("".join(m + "\n" for m in initramfs))
open(out_rootfs, "w").write("".join(m + "\n" for m in sorted(rootfs)))
EOF

step "build the initramfs"
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox_bin" "$ird/bin/busybox"
install -m 0755 "$here/initramfs-init" "$ird/init"
mknod -m 600 "$ird/dev/console" c 5 1
while read -r ko; do
  install -D -m 0644 "$kmods/$ko" "$ird/lib/modules/$ko"
done <"$work/initramfs-modules"
cp "$work/initramfs-modules" "$ird/load-order"
# Uncompressed: decompressing under TCG costs more than reading a few more MB.
(cd "$ird" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$tmp/initrd"

# --- root file system
debootstrap_key=$( (cd "$here" && sha256sum packages.txt; sed -n '/^# --- root file system/,/^# --- end debootstrap/p' "$here/build.sh") | sha256sum | cut -c1-12)
debootstrap_tar=$cache/debootstrap-$suite-$debootstrap_key.tar
rootfs=$work/rootfs
packages=$(grep -v '^#' "$here/packages.txt" | xargs | tr ' ' ,)
if [[ -f $debootstrap_tar ]]; then
  step "unpack the cached debootstrap result $(basename "$debootstrap_tar")"
  mkdir -p "$rootfs"
  tar -C "$rootfs" -xf "$debootstrap_tar"
else
  step "debootstrap $suite (minbase + $packages)"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  mkdir -p "$cache/debs"
  debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
    "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "step debootstrap: failed; the last lines of its log:
$(tail -15 "$work/debootstrap.log")"
  tar -C "$rootfs" -cf "$debootstrap_tar.$$.tmp" . && mv "$debootstrap_tar.$$.tmp" "$debootstrap_tar"
fi
# --- end debootstrap

step "configure the root file system"
cp -a "$here/overlay/." "$rootfs/"
chown -R root:root "$rootfs/etc/systemd" "$rootfs/usr/local/lib/testrig"
while read -r ko; do
  install -D -m 0644 "$kmods/$ko" "$rootfs/lib/modules/$kver/$ko"
done <"$work/rootfs-modules"
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$rootfs/lib/modules/$kver/"
depmod -b "$rootfs" "$kver"
# The device nodes that load their module when opened (/dev/net/tun, /dev/fuse, /dev/loop-control...), as
# tmpfiles lines: what kmod-static-nodes.service writes at every boot (1 s under TCG), written once here.
awk '!/^#/ && NF == 3 {
  dev = $2; type = substr($3, 1, 1); nums = substr($3, 2)
  if (dev ~ /\//) { dir = dev; sub(/\/[^\/]*$/, "", dir); print "d /dev/" dir " 0755 - - -" }
  print type "! /dev/" dev " 0600 - - - " nums
}' "$rootfs/lib/modules/$kver/modules.devname" >"$rootfs/etc/tmpfiles.d/static-nodes.conf"

systemctl --root="$rootfs" enable backdoor.service testrig-node.service >/dev/null 2>&1
# A getty on tty1 (the screen), as on NixOS: tests log in by typing (`send_chars("root\n")`, root has no password)
# and read the screen by OCR or from /dev/vcs1.
systemctl --root="$rootfs" enable getty@tty1.service >/dev/null 2>&1
# Not needed here, and slow under TCG (each costs 0.3 to 6 s of boot) or harmful (a getty on hvc0 or ttyS0 takes
# the tty from the backdoor). Masking keeps them off whatever pulls them in.
masked=(
  serial-getty@hvc0.service serial-getty@ttyS0.service getty-static.service
  e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
  fstrim.timer systemd-tmpfiles-clean.timer systemd-udev-settle.service systemd-firstboot.service
  systemd-remount-fs.service systemd-fsck-root.service systemd-journal-flush.service systemd-pstore.service
  systemd-hwdb-update.service ldconfig.service systemd-update-utmp.service systemd-update-utmp-runlevel.service
  systemd-vconsole-setup.service keyboard-setup.service console-setup.service systemd-binfmt.service
  modprobe@drm.service modprobe@efi_pstore.service sys-kernel-debug.mount sys-kernel-tracing.mount
  dev-hugepages.mount dev-mqueue.mount sys-fs-fuse-connections.mount sys-kernel-config.mount
  systemd-logind.service modprobe@loop.service modprobe@dm_mod.service systemd-sysusers.service
  systemd-random-seed.service systemd-modules-load.service kmod-static-nodes.service systemd-user-sessions.service
)
systemctl --root="$rootfs" mask "${masked[@]}" >/dev/null 2>&1
# Generators run on every boot and each costs 0.2 to 0.3 s under TCG. Kept: debug (systemd.wants=,
# systemd.mask= on the kernel command line) and run (systemd.run=).
mkdir -p "$rootfs/etc/systemd/system-generators"
for gen in fstab gpt-auto rc-local cryptsetup hibernate-resume sysv veritysetup integritysetup system-update getty; do
  ln -sf /dev/null "$rootfs/etc/systemd/system-generators/systemd-$gen-generator"
done
# udev rules for hardware this guest does not have; each rule file is parsed at every start of udevd and matched
# against every device event.
for rules in 60-persistent-alsa 78-sound-card 60-persistent-v4l 70-joystick 70-camera 70-touchpad 70-mouse \
  60-sensor 60-fido-id 60-infiniband 75-probe_mtd 60-persistent-storage-tape 60-cdrom_id 60-evdev 60-input-id \
  60-persistent-input 85-hwclock 64-btrfs 96-e2scrub 71-seat 73-seat-late 70-uaccess 60-drm 60-autosuspend \
  70-power-switch; do
  ln -sf /dev/null "$rootfs/etc/udev/rules.d/$rules.rules"
done
# systemd-user-sessions.service (masked: 1 to 2 s before multi-user.target under TCG) only removes the
# /run/nologin that this tmpfiles entry creates at boot; without either, non-root logins work from the start.
ln -sf /dev/null "$rootfs/etc/tmpfiles.d/systemd-nologin.conf"
mkdir -p "$rootfs/tmp/shared"
systemctl --root="$rootfs" disable nginx.service >/dev/null 2>&1 || true
systemctl --root="$rootfs" set-default multi-user.target >/dev/null 2>&1

passwd_root=$(chroot "$rootfs" passwd -d root 2>&1) || die "step configure: passwd -d root: $passwd_root"
: >"$rootfs/etc/machine-id" # empty: systemd makes one at boot (run-vm passes systemd.machine_id= per node)
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
  "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/etc/ssh/ssh_host_*

step "make rootfs.img (ext4, $image_size)"
# No metadata_csum: checksumming every metadata block costs CPU under TCG and needs crc32c early.
mkfs.ext4 -q -F -L testrig-root -O ^metadata_csum -E lazy_itable_init=0,lazy_journal_init=0 \
  -d "$rootfs" "$tmp/rootfs.img" "$image_size" >&2 || die "step mkfs: mkfs.ext4 -d failed"
chmod 0444 "$tmp/rootfs.img"

step "write the manifest"
{
  echo "testrig guest $(basename "$dir")"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) in $((SECONDS - started)) s"
  echo "kernel: $kernel_pkg $kernel_version (vmlinux, PVH)"
  echo "vmlinux: $(stat -c %s "$tmp/vmlinux") bytes; initrd: $(stat -c %s "$tmp/initrd") bytes"
  echo "rootfs.img: $(stat -c %s "$tmp/rootfs.img") bytes apparent, $(du -k "$tmp/rootfs.img" | cut -f1) KiB on disk"
  echo "root file system content: $(du -sk "$rootfs" | cut -f1) KiB"
  echo "packages:"
  chroot "$rootfs" dpkg-query -W -f '  ${Package} ${Version}\n'
} >"$tmp/manifest.tmp"
rm -rf "$work"
mv "$tmp/manifest.tmp" "$tmp/manifest.txt"
mv "$tmp" "$dir"
trap - ERR
log "done in $((SECONDS - started)) s: $dir"
echo "$dir"
