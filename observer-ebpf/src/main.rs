//! The observer's TC classifiers. Four entry points: Ethernet or L3 device,
//! ingress or egress hook. Each parses the packet, adds it to its flow and
//! the totals, and always returns TC_ACT_UNSPEC (TCX: next) so that the
//! packet goes on untouched and later programs (Calico's) still run.
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "core_intrinsics: atomic_xadd, the atomic add BPF has for shared counters"
)]
#![feature(core_intrinsics)]

mod flow;
mod parse;

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    Global,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{bpf_loop, bpf_skb_pull_data},
    macros::classifier,
    programs::TcContext,
};
use aya_log_ebpf::{debug, macro_support::Level};
use observer_common::{FLOW_CACHE_SLOTS, FlowKey, Hook, Stat, StopAfter};

use crate::{
    flow::{
        Delta, account, count, count_non_ip, flush_cached, last_unparsed, over_mtu,
        remember_unparsed, sample_clock,
    },
    parse::{Fail, Link, Parsed, Why, parse},
};

/// The most detailed log records the programs write (aya-log's level
/// numbers: 2 warn, 4 debug), set by the loader (`observer run
/// --ebpf-log`). Off unless set: aya-log's own level defaults to every
/// record, which another loader of this object would pay for unasked. A
/// constant once loaded (read-only data), so the verifier drops the code of
/// levels that are off.
#[unsafe(no_mangle)]
static OBSERVER_LOG_LEVEL: Global<u8> = Global::new(0);

/// Whether records of `level` are written.
#[inline(always)]
pub fn logs(level: Level) -> bool {
    level as u8 <= OBSERVER_LOG_LEVEL.load()
}

/// Bytes to make linear when headers are not in the linear part of the skb:
/// enough for outer IPv6 + UDP + VXLAN + inner Ethernet + IPv6 + TCP.
const PULL_LEN: u32 = 160;

/// [`StopAfter`] as the const parameter of [`observe`].
const ALL: u8 = StopAfter::Nothing as u8;
const PARSE: u8 = StopAfter::Parse as u8;
const SIZES: u8 = StopAfter::Sizes as u8;

#[classifier]
pub fn eth_ingress(ctx: TcContext) -> i32 {
    observe::<ALL>(&ctx, Link::Ethernet, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn eth_egress(ctx: TcContext) -> i32 {
    observe::<ALL>(&ctx, Link::Ethernet, Hook::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_ingress(ctx: TcContext) -> i32 {
    observe::<ALL>(&ctx, Link::L3, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_egress(ctx: TcContext) -> i32 {
    observe::<ALL>(&ctx, Link::L3, Hook::Egress);
    TC_ACT_UNSPEC
}

// The same, made to stop after the parse or after the packet's sizes:
// the benchmark's account of where the time goes. Entry points of their
// own, so that the daemon's programs carry no check for it; never
// attached by the daemon, loaded only by the benchmark and its test.

#[classifier]
pub fn eth_in_parse(ctx: TcContext) -> i32 {
    observe::<PARSE>(&ctx, Link::Ethernet, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn eth_eg_parse(ctx: TcContext) -> i32 {
    observe::<PARSE>(&ctx, Link::Ethernet, Hook::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_in_parse(ctx: TcContext) -> i32 {
    observe::<PARSE>(&ctx, Link::L3, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn eth_in_sizes(ctx: TcContext) -> i32 {
    observe::<SIZES>(&ctx, Link::Ethernet, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn eth_eg_sizes(ctx: TcContext) -> i32 {
    observe::<SIZES>(&ctx, Link::Ethernet, Hook::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_in_sizes(ctx: TcContext) -> i32 {
    observe::<SIZES>(&ctx, Link::L3, Hook::Ingress);
    TC_ACT_UNSPEC
}

/// Not attached: run by userspace with BPF_PROG_TEST_RUN to read the
/// kernel's jiffies beside CLOCK_MONOTONIC.
#[classifier]
pub fn clock(_ctx: TcContext) -> i32 {
    sample_clock();
    TC_ACT_UNSPEC
}

/// Not attached: run by userspace with BPF_PROG_TEST_RUN on each CPU in
/// turn (`BPF_F_TEST_RUN_ON_CPU`), before it reads the flows' slots, to
/// move the counts waiting in that CPU's flow cache into the slots.
/// Returns how many entries it found busy and left (a classifier it
/// interrupted is counting in them): their counts wait for the next run.
/// (Written out rather than with aya's `raw_tracepoint` macro, whose
/// programs return 0.)
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tp")]
pub fn flush_pending(_ctx: *mut c_void) -> u32 {
    let mut busy = 0u32;
    // SAFETY: `flush_one` has the callback's signature; `busy` outlives
    // the call.
    unsafe {
        bpf_loop(
            FLOW_CACHE_SLOTS,
            flush_one as *mut c_void,
            &raw mut busy as *mut c_void,
            0,
        )
    };
    busy
}

#[inline(never)]
extern "C" fn flush_one(i: u32, busy: *mut c_void) -> i64 {
    // SAFETY: `busy` is `flush_pending`'s counter, on its stack.
    unsafe { *(busy as *mut u32) += flush_cached(i) };
    0
}

/// Does nothing: the baseline the benchmarks compare our cost with.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe<const STOP: u8>(ctx: &TcContext, link: Link, hook: Hook) {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: ctx field reads are rewritten by the verifier.
    let ifindex = unsafe { (*skb).ifindex };
    let mut slot = MaybeUninit::<FlowKey>::uninit();
    let key = zeroed_key(&mut slot, ifindex, hook);
    let mut p = Parsed::default();
    let mut parsed = parse(ctx.data(), ctx.data_end(), link, key, &mut p);
    if matches!(parsed, Err(f) if f.is(Why::Truncated))
        && ctx.len() as usize > ctx.data_end() - ctx.data()
    {
        // Headers beyond the linear area: make them linear (this moves no
        // packet bytes on the wire) and parse once more.
        let want = if ctx.len() < PULL_LEN {
            ctx.len()
        } else {
            PULL_LEN
        };
        // SAFETY: helper on our own skb.
        if unsafe { bpf_skb_pull_data(skb, want) } == 0 {
            zero_key(key, ifindex, hook);
            parsed = parse(ctx.data(), ctx.data_end(), link, key, &mut p);
        }
    }
    match parsed {
        Ok(()) => {}
        Err(f) if f.is(Why::NonIp) => return count_non_ip(key.ifindex),
        Err(f) => {
            // The reason is kept only for the log, which reads it back.
            if logs(Level::Debug) {
                remember_unparsed(f.code());
                log_unparsed(ctx, hook);
            }
            return count(Stat::Unparsed);
        }
    }
    if STOP == PARSE {
        return;
    }

    let len = ctx.len() as u64;
    // SAFETY: ctx field read.
    let gso_segs = unsafe { (*skb).gso_segs } as u64;
    let segs = if gso_segs > 1 { gso_segs } else { 1 };
    let outer_bytes = len.saturating_sub(p.outer_off as u64);
    let (bytes, overhead) = if p.wg_overhead == usize::MAX {
        (0, outer_bytes)
    } else if p.wg_overhead != 0 {
        let o = (p.wg_overhead as u64).min(outer_bytes);
        (outer_bytes - o, o)
    } else {
        (
            len.saturating_sub(p.l3_off as u64) + (segs - 1) * p.hdr_len as u64,
            segs * (p.l3_off - p.outer_off) as u64,
        )
    };
    // Only what a pod sends (TC ingress) can be too big for the tunnel.
    let oversize = if hook == Hook::Ingress && segs == 1 {
        over_mtu(key, bytes)
    } else {
        0
    };
    account::<STOP>(
        key,
        &Delta {
            segs,
            bytes,
            overhead,
            tcp_flags: p.tcp_flags,
            oversize,
        },
    );
}

/// Says why the packet went unparsed (as remembered). Called only when
/// the kernel log is on at debug; otherwise the verifier drops this code,
/// the level being a constant.
#[inline(always)]
fn log_unparsed(ctx: &TcContext, hook: Hook) {
    let f = Fail::from_code(last_unparsed());
    // SAFETY: ctx field read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    debug!(
        ctx,
        "unparsed: {} {} header at byte {} ({} B packet, {} B linear), ifindex {} {}",
        f.why().name(),
        f.header().name(),
        f.at(),
        ctx.len(),
        ctx.data_end() - ctx.data(),
        ifindex,
        hook.name()
    );
}

/// Zeroes the key word by word. (A struct literal or `Default` becomes a
/// call to a byte-wise `memset` loop on the BPF target, and moving the key
/// a byte-wise `memcpy`: it stays where it is made.)
#[inline(always)]
fn zeroed_key(slot: &mut MaybeUninit<FlowKey>, ifindex: u32, hook: Hook) -> &mut FlowKey {
    zero_words(slot.as_mut_ptr());
    // SAFETY: every byte was written by zero_words.
    let key = unsafe { slot.assume_init_mut() };
    key.ifindex = ifindex;
    key.hook = hook as u8;
    key
}

#[inline(always)]
fn zero_key(key: &mut FlowKey, ifindex: u32, hook: Hook) {
    zero_words(key);
    key.ifindex = ifindex;
    key.hook = hook as u8;
}

#[inline(always)]
fn zero_words(key: *mut FlowKey) {
    let words = key as *mut u64;
    // SAFETY: the key's fields, as `FlowKey::word` and `tail` read them.
    unsafe {
        for i in 0..FlowKey::WORDS {
            words.add(i).write_volatile(0);
        }
        ((key as *mut u8).add(FlowKey::TAIL) as *mut u32).write_volatile(0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
