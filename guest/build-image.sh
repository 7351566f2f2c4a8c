#!/usr/bin/env bash
# guest/build-image.sh OUTDIR: the kata-like guest image that tests/guest_vm.rs boots.
# Writes OUTDIR/vmlinuz (Debian's cloud kernel), OUTDIR/rootfs.img (ext4, systemd as PID 1,
# agent-warden + kata-agent + their units) and OUTDIR/cmdline; no initrd is needed (root is
# on NVMe, which that kernel has built in; the virtio drivers load from the rootfs).
# Downloads (the kernel .deb, the Debian base rootfs that mmdebstrap builds) are cached in
# guest/cache/ (or $GUEST_CACHE). docs/DEPLOY.md walks through the same steps.
# Needs: mmdebstrap, e2fsprogs (mkfs.ext4 -d), kmod (depmod), apt-get; run as root so that
# file ownership in the image is right. AGENT_WARDEN_BIN overrides the agent-warden binary
# (default: target/release/agent-warden, built here if missing).
set -euo pipefail
OUT=${1:?usage: guest/build-image.sh OUTDIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${GUEST_CACHE:-$REPO/guest/cache}
SUITE=bookworm
# systemd as init; kmod for modprobe/depmod (kmod-static-nodes fails without it);
# libseccomp2 for kata-agent; cryptsetup-bin, e2fsprogs, mount for the scratch disk.
PACKAGES=systemd,systemd-sysv,udev,kmod,libseccomp2,cryptsetup-bin,e2fsprogs,mount
KATA_AGENT=${KATA_AGENT:-$REPO/../shared/kata-agent/bin/kata-agent}
BIN=${AGENT_WARDEN_BIN:-$REPO/target/release/agent-warden}
start=$(date +%s)
step() { echo "build-image: $* ($(( $(date +%s) - start )) s)"; }

[ -x "$KATA_AGENT" ] || { echo "build-image: no kata-agent at $KATA_AGENT" >&2; exit 1; }
if [ ! -x "$BIN" ]; then
    step "building agent-warden (release)"
    (cd "$REPO" && cargo build --release --quiet)
fi
mkdir -p "$OUT" "$CACHE"
OUT=$(cd "$OUT" && pwd)

# 1. The kernel: the package linux-image-cloud-amd64 depends on, kept in the cache.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "build-image: apt-cache knows no linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
mkdir -p "$CACHE/kernel"
if ! ls "$CACHE/kernel/${KPKG}_"*.deb >/dev/null 2>&1; then
    step "downloading $KPKG"
    (cd "$CACHE/kernel" && apt-get download -q -o APT::Sandbox::User=root "$KPKG")
fi
KDEB=$(ls "$CACHE/kernel/${KPKG}_"*.deb | tail -1)

# 2. The Debian base (minbase + PACKAGES), built once by mmdebstrap and kept as a tarball
#    named after what went into it.
MIRROR=${MIRROR:-$(grep -hs -m1 '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=$CACHE/base-$SUITE-$(echo "$PACKAGES" | sha256sum | cut -c1-12).tar
if [ ! -f "$BASE" ]; then
    step "mmdebstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
    mmdebstrap --quiet --format=tar --variant=minbase --include="$PACKAGES" "$SUITE" "$BASE.tmp" "deb $MIRROR $SUITE main"
    mv "$BASE.tmp" "$BASE"
fi

# 3. The root directory: the base, the kernel's modules, then what this project adds.
W=$OUT/work
rm -rf "$W"
mkdir -p "$W/root" "$W/kernel"
R=$W/root
step "unpacking base and kernel"
tar -xf "$BASE" -C "$R" --numeric-owner
dpkg-deb -x "$KDEB" "$W/kernel"
KVER=$(ls "$W/kernel/lib/modules")
cp "$W/kernel/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
# The scratch disk's mount point in tests/guest_vm.rs (its initdata's agent-warden.toml).
mkdir -p "$R/mnt/scratch"
mkdir -p "$R/lib/modules"
cp -a "$W/kernel/lib/modules/$KVER" "$R/lib/modules/"
depmod -b "$R" "$KVER"   # the package ships no modules.dep

# agent-warden and its units, exactly as docs/DEPLOY.md installs them.
install -D -s -m 0755 "$BIN" "$R/usr/bin/agent-warden"   # stripped: the release build carries debug info
install -D -m 0644 "$REPO/deploy/agent-warden.service" "$R/usr/lib/systemd/system/agent-warden.service"
install -D -m 0644 "$REPO/deploy/kata-agent.service.d/10-agent-warden.conf" \
    "$R/usr/lib/systemd/system/kata-agent.service.d/10-agent-warden.conf"
# kata-agent as kata's image has it; its libraries come from Debian's packages (checked below).
install -D -m 0755 "$KATA_AGENT" "$R/usr/bin/kata-agent"
# This VM's own parts: kata-agent.service and kata-containers.target (written from the
# facts of kata's), the drivers kata's kernel has built in, the evidence source.
cp -a "$REPO/guest/rootfs/." "$R/"
# kata's image starts the agent through kata-containers.target (rootfs.sh links it into
# basic.target; the runtime also boots with systemd.unit=kata-containers.target).
mkdir -p "$R/etc/systemd/system/basic.target.wants"
ln -sf /usr/lib/systemd/system/kata-containers.target "$R/etc/systemd/system/basic.target.wants/kata-containers.target"
# kata-containers.target requires tmp.mount; Debian ships it as an example only.
[ -e "$R/usr/lib/systemd/system/tmp.mount" ] || cp "$R/usr/share/systemd/tmp.mount" "$R/usr/lib/systemd/system/tmp.mount"
echo kata-guest > "$R/etc/hostname"
echo "/dev/nvme0n1 / ext4 rw,relatime 0 1" > "$R/etc/fstab"
# Every binary's libraries resolve inside the image.
for b in /usr/bin/agent-warden /usr/bin/kata-agent /usr/sbin/cryptsetup /usr/sbin/mkfs.ext4; do
    if chroot "$R" /usr/bin/ldd "$b" | grep -q 'not found'; then
        chroot "$R" /usr/bin/ldd "$b" >&2
        echo "build-image: $b misses libraries in the image" >&2
        exit 1
    fi
done
rm -rf "$R/var/cache/apt/"*.bin "$R/var/lib/apt/lists/"*

# 4. The image: ext4 from the directory, no loop device.
MB=$(du -sm "$R" | cut -f1)
SIZE=$(( MB + MB / 4 + 64 ))
step "mkfs.ext4 -d ($MB MiB of files, ${SIZE} MiB image)"
rm -f "$OUT/rootfs.img"
mkfs.ext4 -q -F -L rootfs -d "$R" "$OUT/rootfs.img" "${SIZE}M"
# The kernel command line, as kata's runtime would give it for a systemd image.
echo "console=ttyS0 root=/dev/nvme0n1 rw rootfstype=ext4 panic=-1 quiet systemd.unit=kata-containers.target systemd.show_status=1 systemd.journald.forward_to_console=1" > "$OUT/cmdline"
rm -f "$OUT/initrd.img"
rm -rf "$W"
echo "$KVER" > "$OUT/kernel-version"
step "done: $OUT/vmlinuz ($KVER), $OUT/rootfs.img ($(du -h --apparent-size "$OUT/rootfs.img" | cut -f1) apparent, $(du -h "$OUT/rootfs.img" | cut -f1) allocated), $OUT/cmdline"
