//! Attaching the classifiers to interfaces: TCX first in the chain where the
//! kernel has it (>= 6.6), else a clsact qdisc with a cls_bpf filter at a
//! priority ahead of other filters. Tracks what it created so that
//! shutdown leaves nothing behind.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
    util::KernelVersion,
};
use serde::Serialize;

use super::object::{ETH_EGRESS, ETH_INGRESS, L3_EGRESS, L3_INGRESS};

/// Priority of our cls_bpf filters: lower runs first, and Calico's own
/// filters use higher numbers.
pub const CLSACT_PRIORITY: u16 = 1;

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

/// Whether a device's packets start with an Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkLayer {
    Ethernet,
    L3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Tcx,
    Clsact,
}

struct Attachment {
    name: String,
    via: Via,
    /// The clsact qdisc was added by us (and is removed by us).
    created_qdisc: bool,
    links: Vec<(&'static str, SchedClassifierLinkId)>,
}

pub struct Attacher {
    use_tcx: bool,
    attached: BTreeMap<u32, Attachment>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()?)
}

impl Attacher {
    pub fn new(mode: AttachMode) -> Result<Self> {
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
            links: Vec::new(),
        };
        if !self.use_tcx {
            match tc::qdisc_add_clsact(name) {
                Ok(()) => att.created_qdisc = true,
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).with_context(|| format!("adding clsact qdisc to {name}")),
            }
        }
        for (prog_name, hook) in [
            (ingress, TcAttachType::Ingress),
            (egress, TcAttachType::Egress),
        ] {
            let options = if self.use_tcx {
                TcAttachOptions::TcxOrder(LinkOrder::first())
            } else {
                TcAttachOptions::Netlink(NlOptions {
                    priority: CLSACT_PRIORITY,
                    ..Default::default()
                })
            };
            let result = program(ebpf, prog_name)
                .and_then(|p| Ok(p.attach_with_options(name, hook, options)?));
            match result {
                Ok(id) => att.links.push((prog_name, id)),
                Err(e) => {
                    // Undo the half-done attachment before reporting.
                    release(ebpf, &mut att);
                    return Err(e).with_context(|| format!("attaching {prog_name} to {name}"));
                }
            }
        }
        self.attached.insert(ifindex, att);
        Ok(())
    }

    /// Forgets an interface that is gone: the kernel removed its links,
    /// filters and qdisc with it; releasing ours only closes descriptors.
    pub fn forget(&mut self, ebpf: &mut Ebpf, ifindex: u32) -> Option<String> {
        let mut att = self.attached.remove(&ifindex)?;
        att.created_qdisc = false;
        release(ebpf, &mut att);
        Some(att.name)
    }

    /// Detaches from every interface and removes the clsact qdiscs we added.
    pub async fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let attached = std::mem::take(&mut self.attached);
        let mut qdiscs = Vec::new();
        for (ifindex, mut att) in attached {
            release(ebpf, &mut att);
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
}

fn release(ebpf: &mut Ebpf, att: &mut Attachment) {
    for (prog_name, id) in att.links.drain(..) {
        if let Ok(p) = program(ebpf, prog_name)
            && let Err(e) = p.detach(id)
        {
            tracing::debug!("detaching {prog_name} from {}: {e}", att.name);
        }
    }
}

/// Whether a cls_bpf filter sits at our priority on the clsact ingress and
/// egress hooks of an interface (what `tc filter show` would list).
pub async fn clsact_filters_present(ifindex: u32) -> Result<(bool, bool)> {
    use futures::TryStreamExt as _;
    use netlink_packet_route::tc::TcAttribute;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let ours = |egress: bool| {
        let req = handle.traffic_filter(ifindex as i32).get();
        let req = if egress { req.egress() } else { req.ingress() };
        async move {
            let filters: Vec<_> = req
                .execute()
                .try_collect()
                .await
                .context("dumping tc filters")?;
            anyhow::Ok(filters.iter().any(|f| {
                (f.header.info >> 16) as u16 == CLSACT_PRIORITY
                    && f.attributes
                        .iter()
                        .any(|a| matches!(a, TcAttribute::Kind(k) if k == "bpf"))
            }))
        }
    };
    let found = async { Ok((ours(false).await?, ours(true).await?)) }.await;
    // The connection task ends here whatever the dumps said.
    task.abort();
    found
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
