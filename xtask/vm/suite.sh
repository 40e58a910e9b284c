#!/bin/sh
# The VM test suite (`cargo xtask vm` without a command): modules of the
# integration test binary built on the host (xtask/src/vm/binaries.rs:
# SUITE_TESTS, given as $TEST_integration) run against the guest's kernel,
# one after another. Every module runs; the exit status says whether all
# passed.

# QEMU's emulated CPU loads and verifies eBPF programs many times slower:
# the tests' waits (common::patience) are stretched, still bounded.
export OBSERVER_TEST_SLOWDOWN="${OBSERVER_TEST_SLOWDOWN:-6}"
failed=""

# run NAME ARGS...: the integration tests that libtest's ARGS select (a
# module filter such as `daemon::`, which matches no other module's tests).
run() {
    name=$1
    shift
    if [ -z "$TEST_integration" ]; then
        echo "suite: no integration test binary: add it to SUITE_TESTS in xtask/src/vm/binaries.rs"
        failed="$failed $name"
        return
    fi
    # A filter that selects nothing would pass: a misspelt or renamed one fails.
    if ! "$TEST_integration" "$@" --list 2>/dev/null | grep -q ': test$'; then
        echo "suite: $name: no test matches: $*"
        failed="$failed $name"
        return
    fi
    start=$(date +%s)
    echo "suite: $name $*"
    "$TEST_integration" "$@" || failed="$failed $name"
    echo "suite: $name took $(($(date +%s) - start)) s"
}

# The daemon on real interfaces, one test at a time (daemons loading
# programs side by side starve each other here). Kernels before 6.6 have
# no TCX: its test is left out, and older_kernel checks what the daemon
# says instead.
run daemon daemon:: --skip tcx --test-threads 1
# Nothing lost under clsact: a restart under a stream, killed daemons.
run nothing_lost --exact nothing_lost::a_clsact_restart_counts_every_packet \
    nothing_lost::killed_clsact_daemons_leave_one_filter --test-threads 1
# The classifier on crafted frames (BPF_PROG_TEST_RUN): this kernel's
# verifier and helpers.
run classifier classifier::
# IPIP on a real tunl0, TCX refused, and every capture replayed to the
# same flows as on the host; ignored there.
run older_kernel older_kernel:: --ignored --test-threads 1
# The lab in the seed's modes: IPIP with kube-proxy's IPVS, WireGuard;
# ignored on a host whose kernel lacks the modules.
run tunnels tunnels:: --ignored --test-threads 1

if [ -n "$failed" ]; then
    echo "suite: FAILED:$failed"
    exit 1
fi
echo "suite: all passed on $(uname -r)"
