//! Which kernel the VM boots: Debian's stock kernel (the image the
//! `linux-image-amd64` package depends on) unless `--kernel PATH` says,
//! and whether its modules are there to load.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The Debian package whose kernel the VM tests by default.
pub const STOCK_PACKAGE: &str = "linux-image-amd64";

pub struct Kernel {
    pub image: PathBuf,
    /// `uname -r` of the image, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// `/lib/modules/<release>`, when it exists: the guest loads modules
    /// from the host's root, so they must be built for this very image.
    pub modules: Option<PathBuf>,
}

impl Kernel {
    pub fn find(image: Option<&Path>) -> Result<Kernel> {
        let image = match image {
            Some(path) => path.to_path_buf(),
            None => stock_image()?,
        };
        let release = image_release(&image)?;
        let modules = Path::new("/lib/modules").join(&release);
        Ok(Kernel {
            modules: modules.is_dir().then_some(modules),
            image,
            release,
        })
    }
}

/// `/boot/vmlinuz-<version>` of the kernel package `linux-image-amd64`
/// depends on (`linux-image-6.1.0-57-amd64 (= 6.1.192-3)` on Debian 12).
fn stock_image() -> Result<PathBuf> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}|${Depends}", STOCK_PACKAGE])
        .output()
        .context("starting dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, depends) = text.split_once('|').unwrap_or_default();
    if !out.status.success() || !status.contains("install ok installed") {
        bail!(
            "no kernel to boot: {STOCK_PACKAGE} is not installed (run `cargo xtask setup`, \
             or give one with `--kernel PATH`)"
        );
    }
    let version = depends
        .split(',')
        .filter_map(|d| d.split_whitespace().next())
        .find_map(|p| p.strip_prefix("linux-image-"))
        .with_context(|| format!("{STOCK_PACKAGE} depends on no linux-image-*: {depends:?}"))?;
    let image = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    if !image.is_file() {
        bail!(
            "{} is missing although {STOCK_PACKAGE} is installed; reinstall it",
            image.display()
        );
    }
    Ok(image)
}

/// The release a bzImage says it is: the boot protocol header ("HdrS" at
/// 0x202) points, at 0x20E, to the version string (offset + 0x200), the
/// text `file` prints: `6.1.0-57-amd64 (debian-kernel@...) #1 SMP ...`.
fn image_release(image: &Path) -> Result<String> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    release_from_bzimage(&bytes).with_context(|| {
        format!(
            "{} is not an x86 bzImage (give a vmlinuz, e.g. /boot/vmlinuz-<version>)",
            image.display()
        )
    })
}

fn release_from_bzimage(bytes: &[u8]) -> Option<String> {
    if bytes.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let pointer = u16::from_le_bytes(bytes.get(0x20e..0x210)?.try_into().ok()?);
    let start = 0x200 + usize::from(pointer);
    let text = bytes.get(start..(start + 256).min(bytes.len()))?;
    let end = text.iter().position(|&b| b == 0 || b == b' ')?;
    let release = std::str::from_utf8(&text[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::release_from_bzimage;

    #[test]
    fn reads_the_release_from_the_boot_header() {
        let mut image = vec![0u8; 0x600];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let version = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP";
        image[0x500..0x500 + version.len()].copy_from_slice(version);
        assert_eq!(
            release_from_bzimage(&image).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(release_from_bzimage(&image[..0x100]), None);
        image[0x202] = b'X';
        assert_eq!(release_from_bzimage(&image), None);
    }
}
