//! The MTU limits the kernel counts oversize packets against.

use super::Shared;
use crate::{datapath::Datapath, flows::InterfaceKind};

/// Pod interfaces get the MTU of the tunnel devices that carry routes to
/// other nodes' blocks (per family) as their limit, so that the kernel
/// counts what pods send that cannot fit through the tunnel. A tunnel
/// device that routes nothing (a `tunl0` that exists because the module is
/// loaded) sets no limit. Set on every pod interface when the limits change,
/// and on new pod interfaces.
#[derive(Default)]
pub(super) struct MtuLimits {
    current: (u16, u16),
    set_on: std::collections::HashSet<u32>,
}

impl MtuLimits {
    pub(super) async fn apply(&mut self, dp: &mut Datapath, state: &Shared) {
        let st = state.read().await;
        let routed: std::collections::HashSet<u32> = st
            .model
            .routes()
            .remote_blocks
            .values()
            .map(|r| r.ifindex)
            .collect();
        let (mut v4, mut v6) = (u16::MAX, u16::MAX);
        for (ifindex, s) in st.interfaces.iter().filter(|(_, s)| !s.gone) {
            if !routed.contains(ifindex) {
                continue;
            }
            if let (InterfaceKind::Tunnel(_), Some(mtu)) = (s.iface.kind, s.mtu) {
                let mtu = mtu.min(u16::MAX as u32) as u16;
                if s.iface.name.contains("v6") {
                    v6 = v6.min(mtu);
                } else {
                    v4 = v4.min(mtu);
                }
            }
        }
        let none = |m: u16| if m == u16::MAX { 0 } else { m };
        let limits = (none(v4), none(v6));
        if limits != self.current {
            self.current = limits;
            self.set_on.clear();
        }
        let pods = st
            .interfaces
            .iter()
            .filter(|(_, s)| s.iface.kind == InterfaceKind::Pod && s.via.is_some() && !s.gone);
        for (ifindex, s) in pods {
            if self.set_on.contains(ifindex) {
                continue;
            }
            match dp.set_mtu_limit(*ifindex, limits.0, limits.1) {
                Ok(()) => {
                    self.set_on.insert(*ifindex);
                }
                Err(e) => tracing::warn!(interface = %s.iface.name, "{e:#}"),
            }
        }
        self.set_on.retain(|i| st.interfaces.contains_key(i));
    }
}
