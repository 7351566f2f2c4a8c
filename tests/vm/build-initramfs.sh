#!/bin/sh
# Builds the kernel and initramfs that tests/storage_vm.rs boots under qemu.
#
# Usage: build-initramfs.sh OUT_DIR AGENT_WARDEN_BINARY GUEST_INIT_SCRIPT
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initrd.img and prints "kernel=<version>".
#
# What is cached under tests/vm/cache/ (next to this script), keyed by version:
#   - the Debian kernel package (linux-image-<abi>-amd64, the one linux-image-amd64
#     depends on), fetched with `apt-get download`;
#   - its unpacked tree;
#   - a base initramfs (gzip'd newc cpio) with the kernel modules the storage code
#     needs, busybox-static, cryptsetup, integritysetup and mke2fs with their
#     libraries. Its name carries a hash of this script and of the tool versions.
# The per-run part (the guest /init and the agent-warden binary with its libraries)
# is a second cpio archive appended to the base one; the kernel unpacks both.
#
# Host packages needed: busybox-static cryptsetup-bin e2fsprogs cpio kmod, plus apt
# and network access on the first run (or a pre-filled cache).
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 OUT_DIR AGENT_WARDEN_BINARY GUEST_INIT_SCRIPT" >&2
    exit 2
fi
OUT=$1
BIN=$2
INIT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE="$HERE/cache"
mkdir -p "$CACHE" "$OUT"

need() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "build-initramfs: missing host tool: $tool" >&2
            exit 3
        }
    done
}
need cpio gzip depmod ldd sha256sum dpkg-deb find
# Debian keeps these in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
BUSYBOX=$(command -v busybox || true)
CRYPTSETUP=$(command -v cryptsetup || true)
INTEGRITYSETUP=$(command -v integritysetup || true)
MKE2FS=$(command -v mke2fs || true)
for t in "$BUSYBOX" "$CRYPTSETUP" "$INTEGRITYSETUP" "$MKE2FS"; do
    [ -n "$t" ] || {
        echo "build-initramfs: need busybox (busybox-static), cryptsetup, integritysetup (cryptsetup-bin) and mke2fs (e2fsprogs) on the host" >&2
        exit 3
    }
done
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    echo "build-initramfs: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 3
fi

# ---- 1. The kernel package -------------------------------------------------------
PKG=""
if command -v apt-cache >/dev/null 2>&1; then
    PKG=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
fi
DEB=""
if [ -n "$PKG" ]; then
    DEB=$(ls "$CACHE"/"${PKG}"_*_amd64.deb 2>/dev/null | sort | tail -n 1) || true
    if [ -z "$DEB" ]; then
        echo "build-initramfs: downloading $PKG" >&2
        (cd "$CACHE" && apt-get download "$PKG" >&2)
        DEB=$(ls "$CACHE"/"${PKG}"_*_amd64.deb 2>/dev/null | sort | tail -n 1) || true
    fi
fi
if [ -z "$DEB" ]; then
    # Offline, or apt knows no linux-image-amd64: fall back to whatever is cached.
    DEB=$(ls "$CACHE"/linux-image-*-amd64_*_amd64.deb 2>/dev/null | sort | tail -n 1) || true
fi
if [ -z "$DEB" ] || [ ! -s "$DEB" ]; then
    echo "build-initramfs: no kernel package (apt-get download linux-image-<abi>-amd64 failed and nothing is cached in $CACHE)" >&2
    exit 4
fi
DEBNAME=$(basename "$DEB" .deb)

KTREE="$CACHE/$DEBNAME"
if [ ! -f "$KTREE/.unpacked" ]; then
    rm -rf "$KTREE"
    mkdir -p "$KTREE"
    dpkg-deb -x "$DEB" "$KTREE"
    touch "$KTREE/.unpacked"
fi
KVER=$(ls "$KTREE/lib/modules" | head -n 1)
VMLINUZ="$KTREE/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || {
    echo "build-initramfs: $DEB holds no boot/vmlinuz-$KVER" >&2
    exit 4
}

# ---- 2. The cached base initramfs ------------------------------------------------
versions=""
if command -v dpkg-query >/dev/null 2>&1; then
    versions=$(dpkg-query -W -f='${Package}=${Version} ' busybox-static cryptsetup-bin e2fsprogs 2>/dev/null || true)
fi
RECIPE=$( (cat "$0"; echo "$versions"; echo "$DEBNAME") | sha256sum | cut -c1-16)
BASE="$CACHE/base-$KVER-$RECIPE.cpio.gz"

# Copies a file to the same path under $2, following symlinks for the content.
copy_at() {
    mkdir -p "$2$(dirname "$1")"
    cp -L "$1" "$2$1"
}
# Copies a dynamically linked program's libraries (as ldd names them) under $2.
copy_libs() {
    ldd "$1" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' |
        sed 's/[()]//g' | sort -u | while read -r lib; do
            [ -f "$lib" ] && copy_at "$lib" "$2"
        done
}

if [ ! -s "$BASE" ]; then
    STAGE=$(mktemp -d "$CACHE/stage.XXXXXX")
    trap 'rm -rf "$STAGE"' EXIT
    mkdir -p "$STAGE/bin" "$STAGE/sbin" "$STAGE/etc" "$STAGE/dev" "$STAGE/proc" \
        "$STAGE/sys" "$STAGE/run" "$STAGE/tmp" "$STAGE/mnt" "$STAGE/lib64" \
        "$STAGE/lib/x86_64-linux-gnu"
    # Merged /usr as on the host, so that ldd's paths resolve either way.
    mkdir -p "$STAGE/usr"
    ln -s ../lib "$STAGE/usr/lib"
    ln -s ../lib64 "$STAGE/usr/lib64"
    ln -s ../bin "$STAGE/usr/bin"
    ln -s ../sbin "$STAGE/usr/sbin"

    cp "$BUSYBOX" "$STAGE/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [ -e "$STAGE/bin/$applet" ] || ln -s busybox "$STAGE/bin/$applet"
    done
    for tool in "$CRYPTSETUP" "$INTEGRITYSETUP" "$MKE2FS"; do
        cp -L "$tool" "$STAGE/sbin/$(basename "$tool")"
        copy_libs "$tool" "$STAGE"
    done
    ln -s mke2fs "$STAGE/sbin/mkfs.ext4"
    [ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$STAGE/etc/mke2fs.conf"
    # glibc loads libgcc_s on demand (thread cancellation, unwinding).
    for lib in /lib/x86_64-linux-gnu/libgcc_s.so.1; do
        [ -f "$lib" ] && copy_at "$lib" "$STAGE"
    done
    # The dynamic loader at its canonical path.
    [ -f /lib64/ld-linux-x86-64.so.2 ] && copy_at /lib64/ld-linux-x86-64.so.2 "$STAGE"

    # Kernel modules: only the subtrees the storage path needs, then depmod.
    MSRC="$KTREE/lib/modules/$KVER"
    MDST="$STAGE/lib/modules/$KVER"
    mkdir -p "$MDST/kernel"
    for sub in crypto drivers/md drivers/virtio drivers/char/hw_random fs/ext4 fs/jbd2 lib arch/x86/crypto; do
        if [ -d "$MSRC/kernel/$sub" ]; then
            mkdir -p "$MDST/kernel/$sub"
            cp -a "$MSRC/kernel/$sub/." "$MDST/kernel/$sub/"
        fi
    done
    for ko in fs/mbcache.ko drivers/block/virtio_blk.ko; do
        if [ -f "$MSRC/kernel/$ko" ]; then
            mkdir -p "$MDST/kernel/$(dirname "$ko")"
            cp "$MSRC/kernel/$ko" "$MDST/kernel/$ko"
        fi
    done
    for f in modules.builtin modules.builtin.modinfo modules.order; do
        [ -f "$MSRC/$f" ] && cp "$MSRC/$f" "$MDST/$f"
    done
    depmod -b "$STAGE" "$KVER"

    # A console node, when we may create one; /init copes without it.
    mknod "$STAGE/dev/console" c 5 1 2>/dev/null || true

    (cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) |
        gzip -1 >"$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    rm -rf "$STAGE"
    trap - EXIT
fi

# ---- 3. The per-run overlay: /init and agent-warden --------------------------------
OVL=$(mktemp -d "$OUT/overlay.XXXXXX")
trap 'rm -rf "$OVL"' EXIT
mkdir -p "$OVL/bin"
cp "$INIT" "$OVL/init"
chmod 0755 "$OVL/init"
cp "$BIN" "$OVL/bin/agent-warden"
if command -v strip >/dev/null 2>&1; then
    strip "$OVL/bin/agent-warden" 2>/dev/null || cp "$BIN" "$OVL/bin/agent-warden"
fi
chmod 0755 "$OVL/bin/agent-warden"
copy_libs "$BIN" "$OVL"
(cd "$OVL" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) |
    gzip -1 >"$OUT/overlay.cpio.gz"
cat "$BASE" "$OUT/overlay.cpio.gz" >"$OUT/initrd.img.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
rm -f "$OUT/overlay.cpio.gz"
cp "$VMLINUZ" "$OUT/vmlinuz.tmp"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
echo "kernel=$KVER"
