//! Running a loaded classifier on a frame with BPF_PROG_TEST_RUN: used by
//! `observer replay`, the tests and the benchmarks. The kernel hands an
//! SCHED_CLS program the frame as given (it sets skb->protocol from bytes
//! 12-13, as for an Ethernet frame), on the loopback device.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::{Ebpf, TestRun as _, TestRunOptions, TestRunResult, programs::SchedClassifier};

/// `struct __sk_buff` as BPF_PROG_TEST_RUN accepts it in `ctx_in`: only
/// a few fields may be set, the rest must be zero.
#[repr(C)]
struct SkBuffCtx {
    _head: [u32; 41],
    gso_segs: u32,
    _sk: u64,
    gso_size: u32,
    _tail: [u32; 3],
}

const _: () = assert!(size_of::<SkBuffCtx>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_segs) == 164);
const _: () = assert!(std::mem::offset_of!(SkBuffCtx, gso_size) == 176);

/// What one run returned.
#[derive(Debug, Clone, Copy)]
pub struct RunResult {
    pub return_value: u32,
    /// Kernel-measured mean time per repetition.
    pub duration: Duration,
}

/// Runs program `prog` on `frame` `repeat` times. `gso` = (segments, segment
/// size) makes the skb a GSO super-packet.
pub fn run(
    ebpf: &Ebpf,
    prog: &str,
    frame: &[u8],
    gso: Option<(u32, u32)>,
    repeat: u32,
) -> Result<RunResult> {
    let res = test_run(ebpf, prog, frame, gso, repeat, None)?;
    Ok(RunResult {
        return_value: res.return_value,
        duration: res.duration,
    })
}

/// Runs `prog` once on `frame` and copies the frame as the program left it
/// into `out`; returns the result and that frame's length. The kernel
/// refuses the run when `out` is too small for it.
pub fn run_with_output(
    ebpf: &Ebpf,
    prog: &str,
    frame: &[u8],
    gso: Option<(u32, u32)>,
    out: &mut [u8],
) -> Result<(RunResult, usize)> {
    let res = test_run(ebpf, prog, frame, gso, 1, Some(out))?;
    let result = RunResult {
        return_value: res.return_value,
        duration: res.duration,
    };
    Ok((result, res.data_size_out as usize))
}

fn test_run(
    ebpf: &Ebpf,
    prog: &str,
    frame: &[u8],
    gso: Option<(u32, u32)>,
    repeat: u32,
    out: Option<&mut [u8]>,
) -> Result<TestRunResult> {
    let program: &SchedClassifier = ebpf
        .program(prog)
        .with_context(|| format!("program {prog} missing"))?
        .try_into()?;
    let mut ctx = SkBuffCtx {
        _head: [0; 41],
        gso_segs: 0,
        _sk: 0,
        gso_size: 0,
        _tail: [0; 3],
    };
    if let Some((segs, size)) = gso {
        ctx.gso_segs = segs;
        ctx.gso_size = size;
    }
    // SAFETY: SkBuffCtx is repr(C) plain data; viewing it as bytes is sound.
    let ctx_bytes = unsafe {
        std::slice::from_raw_parts(
            (&ctx as *const SkBuffCtx).cast::<u8>(),
            size_of::<SkBuffCtx>(),
        )
    };
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = out;
    opts.ctx_in = Some(ctx_bytes);
    opts.repeat = repeat.max(1);
    program.test_run(opts).with_context(|| {
        format!(
            "BPF_PROG_TEST_RUN of {prog} on a {}-byte frame",
            frame.len()
        )
    })
}
