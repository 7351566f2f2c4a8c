#!/bin/sh
# /init of the throwaway VM that tests/storage_vm.rs boots (busybox sh).
#
# Runs the scenario named by `aw_boot=` on the kernel command line and reports on the
# serial console, one line per fact, for the host to read:
#   AW-RESULT <check> PASS|FAIL [detail]
#   AW-TIME <label> <seconds>
#   AW-INFO <text>
#   AW-TAMPER-REQUEST <drive-id>   (then waits for a line on the console)
#   AW-DONE
# Disks, in order (the host attaches them):
#   boot 1: vda main (integrity on), vdb main (integrity off), vdc aux 32 MiB,
#           vdd tamper (integrity on), vde tamper (integrity off)
#   boot 2: vda, vdb again (after boot 1's teardown), vdc argon2id comparison
PATH=/bin:/sbin
export PATH

mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/cryptsetup /mnt/aux /mnt/probe

for m in virtio_pci virtio_blk virtio-rng dm-crypt dm-integrity ecb xts authenc \
    crc32c_generic ext4 af_alg algif_skcipher algif_hash; do
    modprobe "$m" 2>/dev/null || echo "AW-INFO modprobe $m failed"
done
dmesg -n 1

BOOT=$(sed -n 's/.*aw_boot=\([0-9]*\).*/\1/p' /proc/cmdline)
MARKER=$(sed -n 's/.*aw_marker=\([A-Za-z0-9]*\).*/\1/p' /proc/cmdline)
MP=/run/kata-containers/image
HDR=/run/agent-warden/storage/header.luks2

now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
flat() { tr '\n' ' ' | cut -c1-600; }
pass() { echo "AW-RESULT $1 PASS ${2:-}"; }
fail() { echo "AW-RESULT $1 FAIL ${2:-}"; }
aw() { /bin/agent-warden storage "$@"; }
# Echo a tool's output indented, so the serial log shows what happened.
show() { sed 's/^/  | /'; }
# Per-step times from an agent-warden report ("  format   0.444 s  ...").
step_times() {
    awk -v p="$1" '$2 ~ /^[0-9.]+$/ && $3 == "s" && $1 != "preflight" { print "AW-TIME " p "-" $1 " " $2 }'
}

# Nothing left behind: status inactive, no device-mapper device, no header, no mount.
clean() {
    aw status >/dev/null 2>&1
    [ $? -eq 3 ] || { echo "status is not inactive"; return 1; }
    if ls /sys/class/block | grep -q '^dm-'; then echo "a dm device remains"; return 1; fi
    [ ! -e "$HDR" ] || { echo "header remains"; return 1; }
    if grep -q " $MP " /proc/self/mountinfo; then echo "still mounted"; return 1; fi
    return 0
}

# expect_refusal NAME WANTED-TEXT ARGS...: setup must fail, say WANTED-TEXT, and leave
# nothing behind.
expect_refusal() {
    name=$1
    want=$2
    shift 2
    out=$(aw setup "$@" 2>&1)
    rc=$?
    echo "$out" | show
    why=$(clean)
    if [ $rc -eq 0 ]; then
        fail "$name" "setup succeeded"
        aw teardown >/dev/null 2>&1
    elif ! echo "$out" | tr '\n' ' ' | grep -q -- "$want"; then
        fail "$name" "rc=$rc, missing '$want' in: $(echo "$out" | flat)"
    elif [ -n "$why" ]; then
        fail "$name" "not rolled back: $why"
    else
        pass "$name" "rc=$rc"
    fi
}

# lifecycle LABEL DEVICE INTEGRITY(on|off): setup, checks, marker, teardown.
lifecycle() {
    label=$1
    dev=$2
    integ=$3
    dmesg -c >/dev/null
    t0=$(now)
    out=$(aw setup --device "$dev" --integrity "$integ" 2>&1)
    rc=$?
    echo "AW-TIME setup-$label-wall $(since "$t0")"
    echo "$out" | show
    if [ $rc -ne 0 ]; then
        fail "setup-$label" "rc=$rc $(echo "$out" | flat)"
        return
    fi
    pass "setup-$label"
    echo "$out" | step_times "setup-$label"
    echo "$out" | awk -v p="setup-$label-total" '/^setup: done in/ { print "AW-TIME " p " " $4 }'

    out=$(aw setup --device "$dev" --integrity "$integ" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && echo "$out" | grep -q "nothing to do"; then
        pass "idempotent-setup-$label"
    else
        fail "idempotent-setup-$label" "rc=$rc $(echo "$out" | flat)"
    fi

    aw status >/dev/null 2>&1
    rc=$?
    [ $rc -eq 0 ] && pass "status-active-$label" || fail "status-active-$label" "rc=$rc"

    opts=$(awk -v mp="$MP" '$5 == mp { print $6 }' /proc/self/mountinfo)
    case ",$opts," in
    *,nodev,*) case ",$opts," in *,nosuid,*) pass "mount-options-$label" "$opts" ;; *) fail "mount-options-$label" "$opts" ;; esac ;;
    *) fail "mount-options-$label" "$opts" ;;
    esac

    i=0
    while [ $i -lt 512 ]; do
        echo "$MARKER line $i of the scratch-disk marker file"
        i=$((i + 1))
    done >"$MP/marker"
    mkdir -p "$MP/many"
    i=0
    while [ $i -lt 1000 ]; do
        echo "$i" >"$MP/many/f$i"
        i=$((i + 1))
    done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    n=$(grep -c "$MARKER" "$MP/marker")
    m=$(cat "$MP"/many/f* | wc -l)
    if [ "$n" = 512 ] && [ "$m" = 1000 ]; then
        pass "readback-$label"
    else
        fail "readback-$label" "marker lines $n, small files $m"
    fi
    # Nothing ever read a sector before it was written (with integrity, such reads are
    # errors): not mkfs, not the kernel, not the workload.
    errs=$(dmesg | grep -c -i -E 'INTEGRITY AEAD ERROR|Buffer I/O error|EXT4-fs error|checksum')
    if [ "$errs" = 0 ]; then
        pass "no-read-errors-$label"
    else
        fail "no-read-errors-$label" "$(dmesg | grep -i -E 'error|checksum' | tail -n 5 | flat)"
    fi

    t0=$(now)
    out=$(aw teardown 2>&1)
    rc=$?
    echo "AW-TIME teardown-$label-wall $(since "$t0")"
    echo "$out" | show
    echo "$out" | step_times "teardown-$label"
    echo "$out" | awk -v p="teardown-$label-total" '/^teardown: done in/ { print "AW-TIME " p " " $4 }'
    if [ $rc -eq 0 ] && echo "$out" | grep -q "overwrote" && echo "$out" | grep -q "closed mapping"; then
        pass "teardown-$label"
    else
        fail "teardown-$label" "rc=$rc $(echo "$out" | flat)"
    fi
    out=$(aw teardown 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && echo "$out" | grep -q "^teardown: nothing to do"; then
        pass "idempotent-teardown-$label"
    else
        fail "idempotent-teardown-$label" "rc=$rc $(echo "$out" | flat)"
    fi
    why=$(clean)
    [ -z "$why" ] && pass "clean-after-teardown-$label" || fail "clean-after-teardown-$label" "$why"
    if cryptsetup isLuks "$dev" 2>/dev/null; then
        fail "no-luks-on-disk-$label" "cryptsetup isLuks $dev succeeded"
    else
        pass "no-luks-on-disk-$label"
    fi
}

# tamper LABEL DEVICE DRIVE-ID INTEGRITY: fill the filesystem, have the host change a
# sector of the disk, read the file again.
tamper() {
    label=$1
    dev=$2
    drive=$3
    integ=$4
    out=$(aw setup --device "$dev" --integrity "$integ" --min-size 16M 2>&1)
    rc=$?
    if [ $rc -ne 0 ]; then
        echo "$out" | show
        fail "tamper-$label" "setup rc=$rc $(echo "$out" | flat)"
        return
    fi
    # Fill the filesystem, so that every data block belongs to the file.
    dd if=/dev/zero of="$MP/fill" bs=1M 2>/dev/null
    sync
    echo 3 >/proc/sys/vm/drop_caches
    before=$(md5sum "$MP/fill" 2>&1)
    rc0=$?
    echo "AW-INFO tamper-$label before: rc=$rc0 size=$(stat -c %s "$MP/fill") $before"
    dmesg -c >/dev/null
    echo "AW-TAMPER-REQUEST $drive"
    reply=""
    read -r -t 300 reply </dev/console
    echo 3 >/proc/sys/vm/drop_caches
    after=$(md5sum "$MP/fill" 2>&1)
    rc1=$?
    echo "AW-INFO tamper-$label after: rc=$rc1 $after"
    echo "AW-INFO tamper-$label kernel: $(dmesg | grep -i -E 'integrity|error' | head -n 3 | flat)"
    case "$reply" in
    go*) ;;
    *) fail "tamper-$label" "no go-ahead from the host (got '$reply')" ;;
    esac
    if [ $rc0 -ne 0 ]; then
        fail "tamper-$label" "the untampered read failed: $before"
    elif [ "$integ" = on ]; then
        if [ $rc1 -ne 0 ] && echo "$after" | grep -q -i -E "I/O error|Input/output error"; then
            pass "tamper-$label" "read failed: $after"
        else
            fail "tamper-$label" "read returned data: rc=$rc1 $after"
        fi
    else
        if [ $rc1 -eq 0 ] && [ "${after%% *}" != "${before%% *}" ]; then
            pass "tamper-$label" "read returned altered data"
        else
            fail "tamper-$label" "rc=$rc1 before=$before after=$after"
        fi
    fi
    out=$(aw teardown 2>&1)
    rc=$?
    [ $rc -eq 0 ] || { echo "$out" | show; fail "tamper-teardown-$label" "rc=$rc"; }
}

# serve_lifecycle DEVICE: `agent-warden serve` with [storage] sets the disk up before
# its listener opens, and tears it down on SIGTERM (exit 0).
serve_lifecycle() {
    dev=$1
    printf '[storage]\ndevice = "%s"\nintegrity = false\n' "$dev" >/tmp/aw.toml
    rm -f /run/aw.sock
    t0=$(now)
    /bin/agent-warden --log info serve --listen unix:///run/aw.sock --agent unix:///run/agent.sock \
        --config /tmp/aw.toml >/tmp/serve.log 2>&1 &
    pid=$!
    i=0
    while [ ! -S /run/aw.sock ] && [ $i -lt 600 ] && kill -0 $pid 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    echo "AW-TIME serve-start-to-listening-with-setup $(since "$t0")"
    if [ -S /run/aw.sock ] && grep -q " $MP " /proc/self/mountinfo; then
        pass serve-startup-setup
    else
        show </tmp/serve.log
        fail serve-startup-setup "no socket or no mount after $i polls"
    fi
    echo "$MARKER written while agent-warden serves" >"$MP/served-marker"
    sync
    t0=$(now)
    kill -TERM $pid
    wait $pid
    rc=$?
    echo "AW-TIME serve-sigterm-to-exit $(since "$t0")"
    why=$(clean)
    if [ $rc -eq 0 ] && [ -z "$why" ] && grep -q "scratch disk torn down at shutdown" /tmp/serve.log; then
        pass serve-sigterm-teardown
    else
        show </tmp/serve.log
        fail serve-sigterm-teardown "rc=$rc $why"
    fi
}

boot1() {
    echo "AW-INFO boot 1: error paths"
    expect_refusal missing-device "does not exist" --device /dev/vdz
    dd if=/dev/zero of=/tmp/not-a-device bs=1M count=80 2>/dev/null
    expect_refusal not-a-block-device "not a block device" --device /tmp/not-a-device
    expect_refusal too-small "too small" --device /dev/vdc
    expect_refusal bad-device-spec "MAJ:MIN" --device vdc

    mkfs.ext4 -q -F /dev/vdc >/dev/null 2>&1
    mount -t ext4 /dev/vdc /mnt/aux
    # A plaintext copy of the marker: the host's scan must find it here (control).
    echo "$MARKER control copy on a plaintext filesystem" >/mnt/aux/control
    sync
    expect_refusal device-mounted "mounted (at /mnt/aux)" --device "$(cat /sys/block/vdc/dev)" --min-size 1M
    umount /mnt/aux

    head -c 32 /dev/urandom >/tmp/plain.key
    if cryptsetup open --batch-mode --type plain --cipher aes-xts-plain64 --key-size 256 \
        --key-file /tmp/plain.key /dev/vdc holder 2>&1 | show; then
        out=$(aw setup --device /dev/vdc --min-size 1M 2>&1)
        rc=$?
        echo "$out" | show
        if [ $rc -ne 0 ] && echo "$out" | grep -q "in use by dm-"; then
            pass device-in-use "rc=$rc"
        else
            fail device-in-use "rc=$rc $(echo "$out" | flat)"
        fi
        cryptsetup close holder
    else
        fail device-in-use "could not stack a mapping on /dev/vdc"
    fi

    printf initdata | dd of=/dev/vdc bs=8 count=1 conv=notrunc 2>/dev/null
    sync
    expect_refusal initdata-magic "initdata magic" --device /dev/vdc --min-size 1M

    expect_refusal cryptsetup-missing "cannot run \`/nonexistent/cryptsetup --version\`" \
        --device /dev/vda --cryptsetup /nonexistent/cryptsetup

    cat >/tmp/failing-mkfs <<'EOF'
#!/bin/sh
# Passes version and dry-run queries to the real mkfs.ext4; fails the real run.
for a in "$@"; do
    case "$a" in -V | -n) exec mkfs.ext4 "$@" ;; esac
done
echo "simulated mkfs failure" >&2
exit 1
EOF
    chmod 0755 /tmp/failing-mkfs
    expect_refusal mkfs-fails-integrity "step mkfs.*simulated mkfs failure.*rolled back cleanly" \
        --device /dev/vda --mkfs /tmp/failing-mkfs
    expect_refusal mkfs-bad-option "step mkfs.*no_such_feature.*rolled back cleanly" \
        --device /dev/vdb --integrity off --mkfs-option=-O --mkfs-option=no_such_feature
    expect_refusal mount-fails "step mount.*rolled back cleanly" \
        --device /dev/vdb --integrity off --fs-option no_such_option

    echo "AW-INFO boot 1: lifecycles"
    lifecycle integrity "$(cat /sys/block/vda/dev)" on
    lifecycle plain /dev/vdb off
    serve_lifecycle /dev/vdb

    echo "AW-INFO boot 1: tampering"
    tamper integrity /dev/vdd tamper-int on
    tamper plain /dev/vde tamper-plain off
}

boot2() {
    echo "AW-INFO boot 2: after teardown"
    aw status >/dev/null 2>&1
    rc=$?
    [ $rc -eq 3 ] && pass second-boot-status-inactive || fail second-boot-status-inactive "rc=$rc"
    for d in vda vdb; do
        why=""
        cryptsetup isLuks /dev/$d 2>/dev/null && why="$why isLuks succeeded;"
        cryptsetup luksDump /dev/$d >/dev/null 2>&1 && why="$why luksDump succeeded;"
        head -c 64 /dev/urandom >/tmp/guess
        cryptsetup open --type luks2 --key-file /tmp/guess /dev/$d guess >/dev/null 2>&1 && why="$why open succeeded;"
        mount -t ext4 -o ro /dev/$d /mnt/probe >/dev/null 2>&1 && { why="$why a plaintext ext4 mounted;"; umount /mnt/probe; }
        ls /run/agent-warden/storage/header.luks2 >/dev/null 2>&1 && why="$why a header exists;"
        if [ -z "$why" ]; then
            pass "second-boot-cannot-open-$d"
        else
            fail "second-boot-cannot-open-$d" "$why"
        fi
    done

    echo "AW-INFO boot 2: cryptsetup defaults (argon2id, header on disk) for comparison"
    head -c 64 /dev/urandom >/tmp/argon.key
    t0=$(now)
    out=$(cryptsetup luksFormat --batch-mode --type luks2 --key-file /tmp/argon.key /dev/vdc 2>&1)
    rc=$?
    echo "AW-TIME argon2id-luksFormat $(since "$t0")"
    [ $rc -eq 0 ] || echo "$out" | show
    cryptsetup luksDump /dev/vdc | grep -E 'PBKDF|Time cost|Memory|Threads' | head -n 4 |
        while read -r l; do echo "AW-INFO argon2id $l"; done
    t0=$(now)
    cryptsetup open --key-file /tmp/argon.key /dev/vdc argon 2>&1 | show
    echo "AW-TIME argon2id-open $(since "$t0")"
    t0=$(now)
    cryptsetup close argon 2>&1 | show
    echo "AW-TIME argon2id-close $(since "$t0")"
    [ $rc -eq 0 ] && pass argon2id-comparison-ran || fail argon2id-comparison-ran "rc=$rc"
}

# No tool gets to wait for console input: stdin is /dev/null (the tamper handshake
# reads the console explicitly).
case "$BOOT" in
1) boot1 </dev/null ;;
2) boot2 </dev/null ;;
*) echo "AW-RESULT scenario FAIL unknown aw_boot='$BOOT'" ;;
esac
echo "AW-DONE"
sync
poweroff -f
