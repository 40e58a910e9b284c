//! What a lab mode needs from the kernel and the machine, checked before
//! anything is built, so that a kernel without IPIP, IPVS or WireGuard
//! (this project's build machines run one) is told so in one line, with
//! what to use instead.

use std::path::Path;

use anyhow::{Result, bail};

use super::plan::{Encap, KubeProxy, Modes};

/// A kernel feature a mode needs: loaded with `modprobe` if it is a module,
/// and known to be there by a path the kernel creates.
struct Feature {
    what: &'static str,
    modules: &'static [&'static str],
    present: &'static str,
    tool: Option<(&'static str, &'static str)>,
    instead: &'static str,
    flag: &'static str,
}

const IPIP: Feature = Feature {
    what: "IPIP",
    modules: &["ipip"],
    // The module's parameters directory: there whether built in or loaded.
    present: "/sys/module/ipip",
    tool: None,
    instead: "use --encap vxlan",
    flag: "--encap ipip",
};

const WIREGUARD: Feature = Feature {
    what: "WireGuard",
    modules: &["wireguard"],
    present: "/sys/module/wireguard",
    tool: Some(("wg", "wireguard-tools")),
    instead: "use --encap vxlan",
    flag: "--encap wireguard",
};

const IPVS: Feature = Feature {
    what: "IPVS",
    modules: &["ip_vs", "ip_vs_rr"],
    present: "/proc/net/ip_vs",
    tool: Some(("ipvsadm", "ipvsadm")),
    instead: "use --kube-proxy nftables",
    flag: "--kube-proxy ipvs",
};

/// Checks (loading modules as needed) what `modes` needs.
pub fn check(modes: &Modes) -> Result<()> {
    let mut needed = Vec::new();
    match modes.encap {
        Encap::Ipip => needed.push(&IPIP),
        Encap::Wireguard => needed.push(&WIREGUARD),
        Encap::Vxlan | Encap::None => {}
    }
    if modes.kube_proxy == KubeProxy::Ipvs {
        needed.push(&IPVS);
    }
    for f in needed {
        require(f)?;
    }
    Ok(())
}

fn require(f: &Feature) -> Result<()> {
    if !Path::new(f.present).exists() {
        for m in f.modules {
            // A failure is told below by the feature's absence.
            let _ = std::process::Command::new("modprobe")
                .arg(m)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    if !Path::new(f.present).exists() {
        bail!(
            "{} needs the {} module, which this kernel ({}) does not have; {}, or run \
             the lab in the VM, whose stock kernel has it: cargo xtask vm -- observer lab up {} ...",
            f.what,
            f.modules[0],
            crate::datapath::object::kernel_release(),
            f.instead,
            f.flag
        );
    }
    if let Some((tool, package)) = f.tool
        && super::netns::run(&["sh", "-c", &format!("command -v {tool}")]).is_err()
    {
        bail!(
            "{} needs `{tool}`, which is not installed (Debian package {package}; \
             `cargo xtask setup` installs it)",
            f.flag
        );
    }
    Ok(())
}
