//! Attaching the classifiers to interfaces: TCX first in the chain where the
//! kernel has it (>= 6.6), else a clsact qdisc with a cls_bpf filter at a
//! priority ahead of other filters.
//!
//! Attachments outlive the daemon when it pins (see [`super::pin`]): TCX
//! links are pinned per interface and clsact filters stay in the kernel,
//! so packets are counted while no daemon runs, and the next daemon swaps
//! its programs in atomically (BPF_LINK_UPDATE, or a filter replaced in
//! place) instead of adding a second set. Filters that a dead daemon left
//! are recognised by priority and program name and replaced, so a restart
//! never leaves two.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    },
    util::KernelVersion,
};
use serde::Serialize;

use super::{
    object::{ETH_EGRESS, ETH_INGRESS, L3_EGRESS, L3_INGRESS},
    pin::PinRoot,
    sys,
};

/// Priority of our cls_bpf filters: lower runs first, and Calico's own
/// filters use higher numbers.
pub const CLSACT_PRIORITY: u16 = 1;

/// Names of the programs we attach: how a filter is told to be ours.
pub const ATTACHED_PROGRAMS: [&str; 4] = [ETH_INGRESS, ETH_EGRESS, L3_INGRESS, L3_EGRESS];

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX where the kernel has it (6.6+), else clsact.
    Auto,
    /// TCX links only.
    Tcx,
    /// clsact qdisc + cls_bpf filters (kernels before 6.6).
    Clsact,
}

pub use crate::api::{AttachedVia as Via, LinkLayer};

/// The two TC hooks, with the names pins and logs use.
const HOOKS: [(TcAttachType, &str); 2] = [
    (TcAttachType::Ingress, "ingress"),
    (TcAttachType::Egress, "egress"),
];

/// One hook's attachment, held so that it can be released or kept.
enum Held {
    /// A TCX link, and its pin when pinned.
    Tcx(FdLink, Option<std::path::PathBuf>),
    /// A cls_bpf filter; dropping it deletes the filter.
    Filter(SchedClassifierLink),
}

struct Attachment {
    name: String,
    via: Via,
    /// The clsact qdisc was added by us (and is removed by us).
    created_qdisc: bool,
    held: Vec<Held>,
}

pub struct Attacher {
    use_tcx: bool,
    pins: Option<PinRoot>,
    attached: BTreeMap<u32, Attachment>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()?)
}

impl Attacher {
    /// With `pins`, TCX links are pinned there (and taken over from an
    /// earlier daemon); without, attachments end with the process.
    pub fn new(mode: AttachMode, pins: Option<PinRoot>) -> Result<Self> {
        let tcx_kernel = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let use_tcx = match mode {
            AttachMode::Auto => tcx_kernel,
            AttachMode::Tcx if !tcx_kernel => bail!(
                "--attach-mode tcx needs Linux 6.6 or newer; this kernel is {} \
                 (--attach-mode auto or clsact attach with a clsact qdisc)",
                super::object::kernel_release()
            ),
            AttachMode::Tcx => true,
            AttachMode::Clsact => false,
        };
        Ok(Self {
            use_tcx,
            pins,
            attached: BTreeMap::new(),
        })
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// (ifindex, name, via) of every attached interface.
    pub fn attached(&self) -> impl Iterator<Item = (u32, &str, Via)> {
        self.attached
            .iter()
            .map(|(i, a)| (*i, a.name.as_str(), a.via))
    }

    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        name: &str,
        layer: LinkLayer,
    ) -> Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        let (ingress, egress) = match layer {
            LinkLayer::Ethernet => (ETH_INGRESS, ETH_EGRESS),
            LinkLayer::L3 => (L3_INGRESS, L3_EGRESS),
        };
        let mut att = Attachment {
            name: name.to_owned(),
            via: if self.use_tcx { Via::Tcx } else { Via::Clsact },
            created_qdisc: false,
            held: Vec::new(),
        };
        if !self.use_tcx {
            match tc::qdisc_add_clsact(name) {
                Ok(()) => att.created_qdisc = true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding clsact qdisc to {name}")),
            }
        }
        for (prog_name, (hook, hook_name)) in [ingress, egress].into_iter().zip(HOOKS) {
            let held = if self.use_tcx {
                self.attach_tcx(ebpf, prog_name, ifindex, name, hook, hook_name)
            } else {
                attach_filter(ebpf, prog_name, ifindex, name, hook)
            };
            match held {
                Ok(h) => att.held.push(h),
                Err(e) => {
                    // Undo the half-done attachment before reporting.
                    self.release(&mut att, true);
                    return Err(e).with_context(|| format!("attaching {prog_name} to {name}"));
                }
            }
        }
        self.attached.insert(ifindex, att);
        Ok(())
    }

    /// A TCX link first in the chain: the pinned one of an earlier daemon
    /// with our program swapped in, or a new one (pinned when we pin).
    fn attach_tcx(
        &self,
        ebpf: &mut Ebpf,
        prog_name: &str,
        ifindex: u32,
        name: &str,
        hook: TcAttachType,
        hook_name: &str,
    ) -> Result<Held> {
        let prog = program(ebpf, prog_name)?;
        let pin = self.pins.as_ref().map(|p| p.link(ifindex, hook_name));
        if let Some(path) = &pin
            && let Some(link) = take_over_link(path, ifindex)
        {
            let id = prog
                .attach_to_link(link.try_into()?)
                .context("swapping our program into the pinned link")?;
            let link: FdLink = prog.take_link(id)?.try_into()?;
            tracing::debug!(interface = %name, hook = hook_name, "took over the pinned TCX link");
            return Ok(Held::Tcx(link, pin));
        }
        let id =
            prog.attach_with_options(name, hook, TcAttachOptions::TcxOrder(LinkOrder::first()))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        let link = match &pin {
            Some(path) => FdLink::from(
                link.pin(path)
                    .with_context(|| format!("pinning the link at {}", path.display()))?,
            ),
            None => link,
        };
        Ok(Held::Tcx(link, pin))
    }

    /// Forgets an interface that is gone: the kernel removed its links,
    /// filters and qdisc with it; what is left is our descriptors and pins.
    pub fn forget(&mut self, ifindex: u32) -> Option<String> {
        let mut att = self.attached.remove(&ifindex)?;
        att.created_qdisc = false;
        // The filters went with the device: nothing to delete.
        for h in att.held.drain(..) {
            match h {
                Held::Tcx(link, pin) => {
                    drop(link);
                    if let Some(p) = pin {
                        let _ = std::fs::remove_file(p);
                    }
                }
                Held::Filter(link) => std::mem::forget(link),
            }
        }
        Some(att.name)
    }

    /// Detaches from one interface that is still there (no longer ours to
    /// watch).
    pub fn detach(&mut self, ifindex: u32) -> Option<String> {
        let mut att = self.attached.remove(&ifindex)?;
        self.release(&mut att, true);
        Some(att.name)
    }

    /// Detaches from every interface and removes the clsact qdiscs we added.
    pub async fn detach_all(&mut self) {
        let attached = std::mem::take(&mut self.attached);
        let mut qdiscs = Vec::new();
        for (ifindex, mut att) in attached {
            self.release(&mut att, true);
            if att.created_qdisc {
                qdiscs.push((ifindex, att.name));
            }
        }
        for (ifindex, name) in qdiscs {
            if let Err(e) = delete_clsact(ifindex).await {
                tracing::warn!("removing clsact qdisc from {name}: {e:#}");
            }
        }
    }

    /// Leaves every attachment in the kernel for the next daemon: pinned
    /// TCX links and clsact filters go on counting into the pinned maps.
    pub fn keep_all(&mut self) {
        for (_, mut att) in std::mem::take(&mut self.attached) {
            self.release(&mut att, false);
        }
    }

    /// Releases the pins of links that no attachment of ours took over
    /// (interfaces gone or no longer selected while no daemon ran): the
    /// kernel frees such links with their last reference.
    pub fn unpin_stale_links(&self) {
        let Some(pins) = &self.pins else { return };
        for (ifindex, hook, path) in pins.links() {
            if !self.attached.contains_key(&ifindex) {
                tracing::info!(
                    ifindex,
                    hook,
                    "releasing a pinned link no interface of ours uses"
                );
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Ends one attachment: detached (`detach`), or left in the kernel.
    fn release(&self, att: &mut Attachment, detach: bool) {
        for h in att.held.drain(..) {
            match (h, detach) {
                (Held::Tcx(link, pin), true) => {
                    if let Some(p) = pin {
                        let _ = std::fs::remove_file(p);
                    }
                    // The last reference: the kernel detaches the link.
                    drop(link);
                }
                // Pinned links live on; unpinned ones end with the process.
                (Held::Tcx(link, _), false) => drop(link),
                // Dropping the link deletes the filter.
                (Held::Filter(link), true) => drop(link),
                (Held::Filter(link), false) => std::mem::forget(link),
            }
        }
    }
}

/// Opens the link pinned at `path` if it is still attached to `ifindex`;
/// a stale pin (its device gone) is removed.
fn take_over_link(path: &std::path::Path, ifindex: u32) -> Option<FdLink> {
    use std::os::fd::AsFd as _;
    // Asked on a descriptor of our own: aya's link does not lend its fd.
    let on = sys::obj_get(path).and_then(|fd| sys::tcx_link_ifindex(fd.as_fd()));
    match on {
        Ok(i) if i == ifindex => PinnedLink::from_pin(path).ok().map(FdLink::from),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        other => {
            tracing::info!(path = %path.display(), ?other, "removing a stale link pin");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Our cls_bpf filter on one hook: one that an earlier daemon left is
/// replaced in place (its program swapped for ours), further ones deleted;
/// else a new one.
fn attach_filter(
    ebpf: &mut Ebpf,
    prog_name: &str,
    ifindex: u32,
    name: &str,
    hook: TcAttachType,
) -> Result<Held> {
    let left = our_filters_blocking(ifindex, hook == TcAttachType::Egress)?;
    let prog = program(ebpf, prog_name)?;
    let id = match left.split_first() {
        Some((first, extra)) => {
            for f in extra {
                delete_filter(name, hook, f.handle);
            }
            let link = SchedClassifierLink::attached(
                name,
                hook,
                CLSACT_PRIORITY,
                tc::TcHandle::from(first.handle),
                None,
            )?;
            tracing::debug!(interface = %name, old = %first.program, "replacing a filter left by an earlier daemon");
            prog.attach_to_link(link)
                .context("replacing the filter left by an earlier daemon")?
        }
        None => prog.attach_with_options(
            name,
            hook,
            TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                ..Default::default()
            }),
        )?,
    };
    Ok(Held::Filter(prog.take_link(id)?))
}

/// Deletes one cls_bpf filter at our priority.
fn delete_filter(name: &str, hook: TcAttachType, handle: u32) {
    // Dropping a link that names the filter deletes it.
    match SchedClassifierLink::attached(
        name,
        hook,
        CLSACT_PRIORITY,
        tc::TcHandle::from(handle),
        None,
    ) {
        Ok(link) => drop(link),
        Err(e) => tracing::warn!(interface = %name, "deleting a stale filter: {e}"),
    }
}

/// A cls_bpf filter at our priority running one of our programs.
#[derive(Clone, Debug)]
pub struct OurFilter {
    pub handle: u32,
    pub program: String,
    pub program_id: Option<u32>,
}

/// Our filters on the clsact ingress (or egress) hook of an interface, as
/// the kernel lists them (what `tc filter show` prints).
pub async fn our_filters(ifindex: u32, egress: bool) -> Result<Vec<OurFilter>> {
    use futures::TryStreamExt as _;
    use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let req = handle.traffic_filter(ifindex as i32).get();
    let req = if egress { req.egress() } else { req.ingress() };
    let dumped = req.execute().try_collect::<Vec<_>>().await;
    // The connection task ends here whatever the dump said.
    task.abort();
    let filters = match dumped {
        Ok(f) => f,
        // No clsact qdisc (or no device): no filters.
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::EINVAL || e.raw_code() == -libc::ENODEV =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e).context("dumping tc filters"),
    };
    Ok(filters
        .iter()
        .filter(|f| (f.header.info >> 16) as u16 == CLSACT_PRIORITY)
        .filter_map(|f| {
            let mut name = None;
            let mut id = None;
            for a in &f.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
                            _ => {}
                        }
                    }
                }
            }
            // The kernel names a filter's program "<name>" or, for the
            // program's own name, what we loaded it as.
            let program = name?;
            ATTACHED_PROGRAMS
                .iter()
                .any(|p| program.trim_end_matches('\0') == *p)
                .then(|| OurFilter {
                    handle: u32::from(f.header.handle),
                    program,
                    program_id: id,
                })
        })
        .collect())
}

/// [`our_filters`] from synchronous code (attaching runs outside tokio's
/// reach in places): on a thread of its own with a small runtime.
fn our_filters_blocking(ifindex: u32, egress: bool) -> Result<Vec<OurFilter>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(our_filters(ifindex, egress))
        })
        .join()
        .unwrap_or_else(|_| bail!("listing tc filters panicked"))
    })
}

/// Removes our filters from an interface (`observer cleanup`), and its
/// clsact qdisc when nothing else is left on it. Returns how many filters
/// were removed.
pub async fn remove_our_filters(ifindex: u32, name: &str) -> Result<usize> {
    let mut removed = 0;
    for (hook, _) in HOOKS {
        let egress = hook == TcAttachType::Egress;
        for f in our_filters(ifindex, egress).await? {
            delete_filter(name, hook, f.handle);
            removed += 1;
        }
    }
    if removed > 0 && any_filters(ifindex).await? == 0 {
        delete_clsact(ifindex).await?;
    }
    Ok(removed)
}

/// How many tc filters of any kind are on an interface's clsact hooks.
async fn any_filters(ifindex: u32) -> Result<usize> {
    use futures::TryStreamExt as _;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut n = 0;
    for egress in [false, true] {
        let req = handle.traffic_filter(ifindex as i32).get();
        let req = if egress { req.egress() } else { req.ingress() };
        n += req
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_or(0, |f| f.len());
    }
    task.abort();
    Ok(n)
}

/// `tc qdisc del dev IFACE clsact`, over rtnetlink.
async fn delete_clsact(ifindex: u32) -> Result<()> {
    use netlink_packet_route::tc::TcHandle;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut req = handle.qdisc().del(ifindex as i32);
    let msg = req.message_mut();
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle::from(0xffff_0000u32);
    let res = req.execute().await;
    task.abort();
    match res {
        Err(rtnetlink::Error::NetlinkError(e))
            if e.raw_code() == -libc::ENODEV || e.raw_code() == -libc::EINVAL =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}
