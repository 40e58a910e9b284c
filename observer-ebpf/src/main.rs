//! The observer's TC classifiers. Four entry points: Ethernet or L3 device,
//! ingress or egress hook. Each parses the packet, adds it to its flow and
//! the totals, and always returns TC_ACT_UNSPEC (TCX: next) so that the
//! packet goes on untouched and later programs (Calico's) still run.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod flow;
mod parse;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::bpf_skb_pull_data,
    macros::classifier,
    programs::TcContext,
};
use observer_common::{FlowKey, Hook, Stat};

use crate::{
    flow::{Delta, account, count, count_non_ip},
    parse::{Fail, Link, parse},
};

/// Bytes to make linear when headers are not in the linear part of the skb:
/// enough for outer IPv6 + UDP + VXLAN + inner Ethernet + IPv6 + TCP.
const PULL_LEN: u32 = 160;

#[classifier]
pub fn eth_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Link::Ethernet, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn eth_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Link::Ethernet, Hook::Egress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_ingress(ctx: TcContext) -> i32 {
    observe(&ctx, Link::L3, Hook::Ingress);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn l3_egress(ctx: TcContext) -> i32 {
    observe(&ctx, Link::L3, Hook::Egress);
    TC_ACT_UNSPEC
}

/// Does nothing: the baseline the benchmarks compare our cost with.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn observe(ctx: &TcContext, link: Link, hook: Hook) {
    let skb: *mut __sk_buff = ctx.skb.skb;
    let mut key = FlowKey {
        // SAFETY: ctx field reads are rewritten by the verifier.
        ifindex: unsafe { (*skb).ifindex },
        hook: hook as u8,
        ..FlowKey::default()
    };
    let mut parsed = parse(ctx.data(), ctx.data_end(), link, &mut key);
    if matches!(parsed, Err(Fail::Truncated)) && ctx.len() as usize > ctx.data_end() - ctx.data() {
        // Headers beyond the linear area: make them linear (this moves no
        // packet bytes on the wire) and parse once more.
        let want = if ctx.len() < PULL_LEN {
            ctx.len()
        } else {
            PULL_LEN
        };
        // SAFETY: helper on our own skb.
        if unsafe { bpf_skb_pull_data(skb, want) } == 0 {
            parsed = parse(ctx.data(), ctx.data_end(), link, &mut key);
        }
    }
    let p = match parsed {
        Ok(p) => p,
        Err(Fail::NonIp) => return count_non_ip(key.ifindex),
        Err(_) => return count(Stat::Unparsed),
    };

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
    account(
        &key,
        &Delta {
            segs,
            bytes,
            overhead,
            tcp_flags: p.tcp_flags,
        },
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
