//! One VM run: `vng` boots the kernel on a copy-on-write view of the host's
//! root file system and runs `xtask/vm/guest.sh`, whose first and last
//! lines tell the host that the guest is up and how the command ended.
//! Every wait is bounded: a VM that does not boot, or a command that does
//! not end, is killed with its whole process group (vng, qemu, virtiofsd).

use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::kernel::Kernel;

/// What `xtask/vm/guest.sh` prints first, once the guest runs the command.
const UP: &str = "observer-vm: up";
/// What it prints last: `observer-vm: exit <status>`.
const EXIT: &str = "observer-vm: exit ";

/// Modules udev would load for QEMU's emulated PC (watchdog, CD-ROM, SMBus,
/// KVM, crypto accelerators): none is needed, and under an emulated CPU
/// loading them takes most of the boot. Only the udev/alias path is
/// blocked: `modprobe NAME` and dependencies still load.
const UNNEEDED_MODULES: &str = "kvm,kvm_amd,kvm_intel,ahci,libahci,libata,sr_mod,sg,cdrom,\
lpc_ich,i2c_i801,i2c_smbus,i6300esb,iTCO_wdt,iTCO_vendor_support,pcspkr,psmouse,evdev,\
serio_raw,joydev,button,aesni_intel,ghash_clmulni_intel,crc32_pclmul,crct10dif_pclmul,\
sha512_ssse3,sha256_ssse3,sha1_ssse3,powernow_k8,acpi_cpufreq,ccp,sp5100_tco,k10temp,\
edac_mce_amd,intel_rapl_msr,qemu_fw_cfg,floppy,bochs";

pub struct Boot<'a> {
    pub vng: &'a Path,
    pub kernel: &'a Kernel,
    /// Hardware virtualisation (else QEMU's emulated CPU).
    pub kvm: bool,
    /// Where the guest starts (the workspace: relative paths work there).
    pub cwd: &'a Path,
    /// The shell command line the guest runs.
    pub exec: String,
    pub boot_timeout: Duration,
    pub run_timeout: Duration,
}

pub struct Ran {
    /// From starting vng to the guest running the command.
    pub boot: Duration,
    /// The command's own time.
    pub run: Duration,
    pub status: i32,
}

/// The guest never came up (as opposed to a command that failed in it).
#[derive(Debug)]
pub struct DidNotBoot(pub String);

impl std::fmt::Display for DidNotBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DidNotBoot {}

enum Line {
    Out(String),
    Err(String),
}

/// Boots, passes the guest's output to `on_line` (stdout) and to stderr,
/// and returns the command's exit status with the times.
pub fn run(b: &Boot<'_>, on_line: &mut dyn FnMut(&str)) -> Result<Ran> {
    let mut cmd = Command::new(b.vng);
    cmd.arg("--run")
        .arg(&b.kernel.image)
        .args(["--user", "root", "--cpus", "2", "--memory", "2G"])
        .args([
            "--append",
            &format!("modprobe.blacklist={UNNEEDED_MODULES}"),
        ])
        .args(["--exec", &b.exec])
        .current_dir(b.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout kills qemu and virtiofsd too.
        .process_group(0);
    if !b.kvm {
        cmd.arg("--disable-kvm");
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting vng (virtme-ng): run `cargo xtask setup`")?;
    let lines = forward_lines(&mut child)?;
    let mut group = Group(Some(child));

    let mut up = None;
    let mut status = None;
    let mut tail = Tail::default();
    loop {
        let deadline = match up {
            None => started + b.boot_timeout,
            Some(at) => started + at + b.run_timeout,
        };
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                group.kill();
                return Err(match up {
                    None => DidNotBoot(format!(
                        "the VM did not boot within {:?}{}",
                        b.boot_timeout,
                        tail.show()
                    ))
                    .into(),
                    Some(_) => anyhow::anyhow!(
                        "the command in the VM did not end within {:?}: stopped",
                        b.run_timeout
                    ),
                });
            }
        };
        match line {
            Line::Out(text) => {
                if up.is_none() && text.starts_with(UP) {
                    up = Some(started.elapsed());
                }
                if let Some(n) = text.strip_prefix(EXIT) {
                    status = n.trim().parse().ok();
                }
                on_line(&text);
                tail.push(text);
            }
            Line::Err(text) => {
                eprintln!("{text}");
                tail.push(text);
            }
        }
    }
    let vng_status = group.wait()?;
    let Some(boot) = up else {
        return Err(DidNotBoot(format!(
            "the VM stopped before the guest ran anything (vng: {vng_status}){}",
            tail.show()
        ))
        .into());
    };
    let Some(status) = status else {
        bail!(
            "the VM died while running the command (vng: {vng_status}): a kernel crash or \
             out of memory?{}",
            tail.show()
        );
    };
    Ok(Ran {
        boot,
        run: started.elapsed().saturating_sub(boot),
        status,
    })
}

/// Sends the child's stdout and stderr lines, as they come, to one channel
/// that closes when both streams have.
fn forward_lines(child: &mut Child) -> Result<mpsc::Receiver<Line>> {
    fn pump(stream: impl Read + Send + 'static, tx: mpsc::Sender<Line>, wrap: fn(String) -> Line) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                // The guest's console ends lines with CR LF.
                if tx
                    .send(wrap(line.trim_end_matches('\r').to_owned()))
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    pump(
        child.stdout.take().context("vng stdout")?,
        tx.clone(),
        Line::Out,
    );
    pump(child.stderr.take().context("vng stderr")?, tx, Line::Err);
    Ok(rx)
}

/// vng and everything it started; killed on drop unless waited for.
struct Group(Option<Child>);

impl Group {
    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }

    fn wait(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.0.take().context("vng already reaped")?;
        Ok(child.wait()?)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines seen, to show why a VM did not come up.
#[derive(Default)]
struct Tail(std::collections::VecDeque<String>);

impl Tail {
    const LINES: usize = 20;

    fn push(&mut self, line: String) {
        if self.0.len() == Self::LINES {
            self.0.pop_front();
        }
        self.0.push_back(line);
    }

    fn show(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = self.0.iter().map(String::as_str).collect();
        format!("; its last output:\n{}", lines.join("\n"))
    }
}
