#!/bin/sh
# PID 1 of the vm-test VM (run by busybox sh). The host reads this console: it needs one
# IMDS-VM-RESULT line per backend whatever happens here, so nothing below may end the script
# early (no `set -e`; PID 1 exiting is a kernel panic) and every step reports its own failure.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp
# The tests look for imds-probe, fake-imds and uring-client here.
export IMDS_PROBE_BIN_DIR=/opt/imds-probe/bin

# type source target: everything the daemon and the tests expect a booted Debian to have.
while read -r fstype source target; do
    mkdir -p "$target"
    mount -t "$fstype" "$source" "$target" || echo "IMDS-VM-WARN mount -t $fstype $target failed"
done <<EOF
proc proc /proc
sysfs sysfs /sys
devtmpfs devtmpfs /dev
tmpfs tmpfs /run
tmpfs tmpfs /tmp
tmpfs tmpfs /dev/shm
bpf bpffs /sys/fs/bpf
cgroup2 cgroup2 /sys/fs/cgroup
tracefs tracefs /sys/kernel/tracing
debugfs debugfs /sys/kernel/debug
EOF

/usr/bin/ip link set lo up || echo "IMDS-VM-WARN ip link set lo up failed"

kernel=unknown
backends=
bench=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
    imds_vm.kernel=*) kernel=${arg#*=} ;;
    imds_vm.backends=*) backends=$(echo "${arg#*=}" | tr , ' ') ;;
    imds_vm.bench=*) bench=$(echo "${arg#*=}" | tr : ' ') ;;
    esac
done
echo "IMDS-VM-BOOTED kernel=$kernel release=$(uname -r)"

# A missing tool or library shows up here by name, not as a puzzling test failure later.
# Absolute paths: Debian's busybox sh prefers its own applets over PATH for `ip` and
# `unshare`, while the tests exec through PATH and so get these.
tools_ok=yes
check() {
    if ! "$@" >/dev/null 2>&1; then
        echo "IMDS-VM-WARN tool check failed: $*"
        "$@" 2>&1 | head -n 5
        tools_ok=no
    fi
}
check /usr/bin/python3 -c 'import socket, os, tempfile, threading, time'
check /usr/bin/curl --version
check /usr/bin/ip netns list
check /usr/bin/unshare --version
echo "IMDS-VM-TOOLS ok=$tools_ok"

# cargo xtask vm-bench: the benchmark instead of the tests, reported as one "backend".
if [ -n "$bench" ]; then
    echo "IMDS-VM-START kernel=$kernel backend=bench"
    result=failure
    # $bench unquoted on purpose: it is the argument list.
    PATH="$IMDS_PROBE_BIN_DIR:$PATH" "$IMDS_PROBE_BIN_DIR/xtask" bench $bench </dev/null 2>&1 &&
        result=success
    echo "IMDS-VM-RESULT kernel=$kernel backend=bench result=$result"
    backends=
fi

for backend in $backends; do
    echo "IMDS-VM-START kernel=$kernel backend=$backend"
    result=success
    ran=0
    # Backend-independent tests (tests-once/) run with the first backend only.
    once=
    [ "$backend" = "${backends%% *}" ] && once=/opt/imds-probe/tests-once/*
    for test in /opt/imds-probe/tests/* $once; do
        [ -x "$test" ] || continue
        ran=$((ran + 1))
        echo "IMDS-VM-RUN backend=$backend test=${test##*/}"
        IMDS_PROBE_TEST_BACKEND=$backend "$test" --test-threads=1 </dev/null 2>&1 || result=failure
    done
    # No test executable means nothing was checked, which must not read as a pass.
    [ "$ran" -gt 0 ] || result=failure
    echo "IMDS-VM-RESULT kernel=$kernel backend=$backend result=$result"
done

echo "IMDS-VM-DONE kernel=$kernel"
sync
poweroff -f
# poweroff -f only returns if it failed; the host's timeout would still end the VM, but a
# sysrq power-off ends it now.
echo o >/proc/sysrq-trigger
sleep 60
