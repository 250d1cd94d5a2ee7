//! The cached Debian base images, one per release (debootstrap minbase + what a lab host
//! needs).

use super::error::{io, LabError, Result};
use super::sys;
use crate::platform::Platform;
use sha2::{Digest, Sha256};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Packages on top of minbase: systemd as PID 1, sshd, and what the cluster's tooling needs.
pub const PACKAGES: &[&str] = &[
    "ca-certificates",
    "dbus",
    "iproute2",
    "openssh-server",
    "procps",
    "python3",
    "sudo",
    "systemd",
    "systemd-sysv",
];

/// Bumped when the post-processing of the image changes.
const RECIPE: u32 = 1;

/// Default cache directory.
pub const CACHE_DIR: &str = "/var/cache/pgdeploy";

/// Cache key: hash of suite, variant, package list and recipe.
pub fn cache_key(platform: Platform) -> String {
    let mut pkgs: Vec<&str> = PACKAGES.to_vec();
    pkgs.sort_unstable();
    let text = format!(
        "suite={}\nvariant=minbase\ninclude={}\nrecipe={RECIPE}\n",
        platform.codename(),
        pkgs.join(",")
    );
    hex::encode(Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// Path of the cached base image of a release for the current key.
pub fn base_path(cache_dir: &Path, platform: Platform) -> PathBuf {
    cache_dir.join(format!(
        "base-{}-{}",
        platform.codename(),
        cache_key(platform)
    ))
}

/// The result of [`ensure_base`].
#[derive(Debug, Clone)]
pub struct BaseImage {
    pub path: PathBuf,
    /// Whether it was built now (false: taken from the cache).
    pub built: bool,
    pub build_time: Duration,
}

/// The Debian mirror for a release, from this machine's apt sources (deb822 or one-line
/// format): the entry for the release's main suite, or the one of the release this machine is
/// configured for (the same mirror serves both).
pub fn mirror(platform: Platform) -> Result<String> {
    let etc_apt = Path::new("/etc/apt");
    let entries = crate::bundle::read_system_sources(etc_apt).unwrap_or_default();
    crate::bundle::debian_entries_for(&entries, platform.codename())
        .into_iter()
        .find(|e| e.suites.iter().any(|s| s == platform.codename()))
        .and_then(|e| e.uris.first().cloned())
        .ok_or_else(|| {
            LabError::NoMirror(format!(
                "{} or {}",
                etc_apt.join("sources.list.d/debian.sources").display(),
                etc_apt.join("sources.list").display()
            ))
        })
}

/// Exclusive lock on the cache directory while building (released when dropped).
struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    async fn take(dir: &Path) -> Result<CacheLock> {
        let p = dir.join(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(format!("cannot open {}", p.display())))?;
        let fd = f.as_raw_fd();
        // flock blocks: do it off the runtime's threads.
        let rc = tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a valid descriptor owned by `f`, which outlives this call.
            unsafe { libc::flock(fd, libc::LOCK_EX) }
        })
        .await
        .unwrap_or(-1);
        if rc != 0 {
            return Err(LabError::Io {
                what: format!("cannot lock {}", p.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(CacheLock { _file: f })
    }
}

/// Return the cached base image, building it first if missing. A build goes to a temporary
/// directory and is renamed into place when complete, so the cache never holds a half image.
pub async fn ensure_base(cache_dir: &Path, platform: Platform) -> Result<BaseImage> {
    let path = base_path(cache_dir, platform);
    if path.join("etc/os-release").exists() {
        return Ok(BaseImage {
            path,
            built: false,
            build_time: Duration::ZERO,
        });
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(io(format!("cannot create {}", cache_dir.display())))?;
    let _lock = CacheLock::take(cache_dir).await?;
    if path.join("etc/os-release").exists() {
        // someone else built it while we waited for the lock
        return Ok(BaseImage {
            path,
            built: false,
            build_time: Duration::ZERO,
        });
    }
    remove_stale_builds(cache_dir);
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache_dir)
        .map_err(io(format!(
            "cannot create a build directory in {}",
            cache_dir.display()
        )))?;
    let root = tmp.path().join("root");
    let result = build_into(&root, platform).await;
    if let Err(e) = result {
        sys::unmount_all_under(tmp.path());
        return Err(e);
    }
    if !sys::mounts_under(tmp.path()).is_empty() {
        let problems = sys::unmount_all_under(tmp.path());
        if !problems.is_empty() {
            return Err(LabError::Command {
                cmd: "debootstrap".into(),
                detail: problems.join("; "),
            });
        }
    }
    std::fs::rename(&root, &path).map_err(io(format!(
        "cannot move the built image to {}",
        path.display()
    )))?;
    Ok(BaseImage {
        path,
        built: true,
        build_time: started.elapsed(),
    })
}

/// Remove `.build-*` directories that a crashed build left behind (we hold the lock).
fn remove_stale_builds(cache_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(".build-") {
            let p = e.path();
            if sys::unmount_all_under(&p).is_empty() && sys::mounts_under(&p).is_empty() {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
}

async fn build_into(root: &Path, platform: Platform) -> Result<()> {
    let mirror = mirror(platform)?;
    let include = format!("--include={}", PACKAGES.join(","));
    let root_s = root.to_string_lossy().into_owned();
    sys::run_async(
        "debootstrap",
        &[
            "--variant=minbase",
            include.as_str(),
            platform.codename(),
            root_s.as_str(),
            mirror.as_str(),
        ],
    )
    .await?;
    post_process(root)
}

/// Make the image a neutral template: no host keys, no machine id, no package caches.
fn post_process(root: &Path) -> Result<()> {
    let ssh = root.join("etc/ssh");
    if let Ok(rd) = std::fs::read_dir(&ssh) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path())
                    .map_err(io(format!("cannot remove {}", e.path().display())))?;
            }
        }
    }
    // Each host gets its own keys; sshd loads exactly these.
    sys::write_file(
        &root.join("etc/ssh/sshd_config.d/pgdeploy-lab.conf"),
        b"# pgdeploy lab host\nHostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\nPasswordAuthentication no\n",
        0o644,
    )?;
    sys::write_file(&root.join("etc/machine-id"), b"", 0o444)?;
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = std::fs::read_dir(root.join(d)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}
