#!/bin/sh
# What `cargo xtask vm` runs in the guest: guest.sh ENV_FILE COMMAND.
# ENV_FILE (written by xtask/src/vm/mod.rs) exports the binaries' paths.
# The first and the last lines are how the host tells "booted" and "the
# command ended with N" apart from a VM that never came up or died.
. "$1" || exit 125
echo "observer-vm: up: kernel $(uname -r), $(nproc) CPUs, $(cut -d' ' -f1 /proc/uptime) s since the kernel started"
if [ ! -d "/lib/modules/$(uname -r)" ]; then
    echo "observer-vm: warning: no /lib/modules/$(uname -r): modprobe cannot load this kernel's modules (install the image's modules package on the host)" >&2
fi
export PATH="$OBSERVER_DIR:$PATH"
sh -c "$2"
status=$?
echo "observer-vm: exit $status"
exit $status
