//! `pgdeploy bundle`: build, on the control machine, a flat apt repository with the dependency
//! closure of the pinned packages, for hosts that cannot reach a package mirror.
//!
//! The closure is resolved by apt from an EMPTY dpkg status with private state
//! (`<bundle>/.apt/`: sources, lists, cache, archives), so it is complete for any system of
//! the inventory's Debian release and the control machine's own apt state is untouched. The repository is built in a
//! temporary directory next to the target and swapped in atomically. A host uses it as
//! `deb [trusted=yes] file:/var/lib/pgdeploy/repo ./`; `manifest.json` lists every file with its
//! size and SHA-256 so the packages phase pushes only what a host lacks.

mod apt;
mod manifest;
mod sources;

pub use apt::{
    madison_versions, match_version, parse_simulation, postgres_major, PrivateApt, ReleaseInfo,
    ResolvedPackage,
};
pub use manifest::{
    hash_file, BundleFile, DebianRelease, Manifest, PostgresRelease, MANIFEST_FILE,
};
pub use sources::{
    debian_entries_for, filter_debian, parse_any, parse_deb822, parse_one_line,
    read_system_sources, render_deb822, SourceEntry,
};

use crate::inventory::Inventory;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Architecture of the hosts.
pub const ARCHITECTURE: &str = "amd64";
/// Where the repository lives on a host.
pub const HOST_REPO_DIR: &str = "/var/lib/pgdeploy/repo";
/// Name of the private apt state directory inside the bundle directory (not part of the repo).
pub const APT_STATE_DIR: &str = ".apt";

/// Packages besides PostgreSQL: Patroni (its etcd3 DCS needs python3-etcd; its Depends bring
/// python3-psycopg2 and the rest), etcd (server and etcdctl for health checks), HAProxy,
/// pgBackRest (backups, on the database and repository hosts).
pub const EXTRA_PACKAGES: [&str; 6] = [
    "patroni",
    "python3-etcd",
    "etcd-server",
    "etcd-client",
    "haproxy",
    "pgbackrest",
];

/// Errors of the bundle builder.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BundleError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    #[diagnostic(help("fix the apt source entry (deb822 `Field: value` stanzas or one-line `deb URI SUITE COMPONENT...`)"))]
    SourceSyntax { origin: String, message: String },
    #[error("no Debian {codename} archive source found in {searched}")]
    #[diagnostic(help("configure a Debian mirror in /etc/apt/sources.list.d/debian.sources, or list sources in the inventory under packages.debian_sources"))]
    NoDebianSources { codename: String, searched: String },
    #[error("cannot run `{command}`: {source}")]
    #[diagnostic(help("install apt and apt-utils (apt-ftparchive) on the control machine"))]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("postgres.version {version:?} is not MAJOR.MINOR (e.g. \"15.18\")")]
    BadPostgresVersion { version: String },
    #[error("{package} {version} not found in the package sources; available: {available}")]
    #[diagnostic(help("set postgres.version in the inventory to one of the available versions"))]
    VersionNotFound {
        package: String,
        version: String,
        available: String,
    },
    #[error("apt resolved {package} {version} but {} is missing after the download", path.display())]
    MissingArchive {
        package: String,
        version: String,
        path: PathBuf,
    },
    #[error("{}: {message}", path.display())]
    #[diagnostic(help("rebuild the bundle with `pgdeploy bundle`"))]
    BadManifest { path: PathBuf, message: String },
    #[error("{} does not match the manifest: {message}", path.display())]
    #[diagnostic(help("rebuild the bundle with `pgdeploy bundle`"))]
    Corrupt { path: PathBuf, message: String },
    #[error("{} exists and is not a pgdeploy bundle", path.display())]
    #[diagnostic(help("remove it or point packages.bundle_dir somewhere else"))]
    NotABundle { path: PathBuf },
    #[error("another `pgdeploy bundle` is building {}", path.display())]
    #[diagnostic(help("wait for it to finish"))]
    Busy { path: PathBuf },
}

/// Where the package sources come from.
#[derive(Debug, Clone)]
pub enum SourceChoice {
    /// The Debian archive entries configured in this apt configuration directory
    /// (normally `/etc/apt`); third-party repositories are left out.
    System(PathBuf),
    /// Explicit entries (deb822 stanzas or one-line entries), used as given.
    Given(Vec<String>),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The repository directory (created or replaced).
    pub bundle_dir: PathBuf,
    /// PostgreSQL minors ("15.18"); the first is the inventory's. Several give a bundle for a
    /// rolling minor upgrade (each minor's closure is resolved separately).
    pub postgres_versions: Vec<String>,
    pub sources: SourceChoice,
    pub codename: String,
    pub architecture: String,
}

impl BuildOptions {
    /// Options for an inventory: its `packages.bundle_dir` and `postgres.version`, plus extra
    /// minors; `packages.debian_sources` if given, else the Debian sources of `/etc/apt`.
    pub fn from_inventory(inv: &Inventory, also_postgres: &[String]) -> BuildOptions {
        let mut versions = vec![inv.postgres.version.clone()];
        for v in also_postgres {
            if !versions.contains(v) {
                versions.push(v.clone());
            }
        }
        BuildOptions {
            bundle_dir: inv.resolve_path(&inv.packages.bundle_dir),
            postgres_versions: versions,
            sources: if inv.packages.debian_sources.is_empty() {
                SourceChoice::System(PathBuf::from("/etc/apt"))
            } else {
                SourceChoice::Given(inv.packages.debian_sources.clone())
            },
            codename: inv.platform.codename().into(),
            architecture: ARCHITECTURE.into(),
        }
    }
}

/// Result of a build.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub bundle_dir: PathBuf,
    pub packages: usize,
    pub bytes: u64,
    /// Packages that were not in the private cache and had to be downloaded.
    pub downloaded: usize,
    pub elapsed: Duration,
    pub postgres: Vec<PostgresRelease>,
    /// The published bundle already matched: nothing was rewritten.
    pub up_to_date: bool,
}

/// Resolve a PostgreSQL "MAJOR.MINOR" (or a full Debian version) to the Debian version of
/// `postgresql-MAJOR` available from the private apt state (after `update`).
pub fn resolve_postgres_version(
    apt: &PrivateApt,
    version: &str,
) -> Result<PostgresRelease, BundleError> {
    let major = postgres_major(version)?;
    let package = format!("postgresql-{major}");
    let madison = apt.madison(&package)?;
    let debian_version = match_version(&madison, &package, version)?;
    Ok(PostgresRelease {
        version: version.to_string(),
        major,
        debian_version,
    })
}

/// The private sources file for a build (deb822 text).
pub fn private_sources(choice: &SourceChoice, codename: &str) -> Result<String, BundleError> {
    let entries = match choice {
        SourceChoice::System(etc_apt) => {
            let all = read_system_sources(etc_apt)?;
            let deb = sources::debian_entries_for(&all, codename);
            if deb.is_empty() {
                return Err(BundleError::NoDebianSources {
                    codename: codename.into(),
                    searched: format!(
                        "{} and {}/*.{{list,sources}}",
                        etc_apt.join("sources.list").display(),
                        etc_apt.join("sources.list.d").display()
                    ),
                });
            }
            deb
        }
        SourceChoice::Given(texts) => {
            let mut all = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                all.extend(parse_any(t, &format!("packages.debian_sources[{i}]"))?);
            }
            let deb = sources::binary_entries(&all);
            if deb.is_empty() {
                return Err(BundleError::NoDebianSources {
                    codename: codename.into(),
                    searched: "packages.debian_sources".into(),
                });
            }
            deb
        }
    };
    Ok(render_deb822(&entries))
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |source| BundleError::Io { what, path, source }
}

/// An exclusive lock on `<parent>/.<name>.lock`, released on drop (closing the file).
struct BuildLock(#[allow(dead_code)] std::fs::File);

fn lock(path: &Path, bundle_dir: &Path) -> Result<BuildLock, BundleError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("create the lock file", path))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(BundleError::Busy {
            path: bundle_dir.to_path_buf(),
        });
    }
    Ok(BuildLock(f))
}

/// Swap two directories atomically (renameat2 RENAME_EXCHANGE); false if the filesystem
/// does not support it.
fn exchange(a: &Path, b: &Path) -> Result<bool, BundleError> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())
        .map_err(|_| io("swap", a)(std::io::ErrorKind::InvalidInput.into()))?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())
        .map_err(|_| io("swap", b)(std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: valid NUL-terminated paths; AT_FDCWD for relative paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(io("swap in the new bundle at", b)(err)),
    }
}

/// Link (or copy) a file.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), BundleError> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(io("copy a package into the bundle at", to))
}

fn run_tool(dir: &Path, program: &str, args: &[&str]) -> Result<Vec<u8>, BundleError> {
    let shown = format!("{program} {}", args.join(" "));
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| BundleError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(BundleError::Command {
            command: shown,
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// The requests for one PostgreSQL minor: server, client and libpq5 pinned to the same
/// Debian version (apt would otherwise pick the newest libpq5), plus the other packages.
fn requests_for(pg: &PostgresRelease, libpq_pinned: bool) -> Vec<String> {
    let mut r = vec![
        format!("postgresql-{}={}", pg.major, pg.debian_version),
        format!("postgresql-client-{}={}", pg.major, pg.debian_version),
    ];
    if libpq_pinned {
        r.push(format!("libpq5={}", pg.debian_version));
    }
    r.extend(EXTRA_PACKAGES.iter().map(|s| s.to_string()));
    r
}

fn is_published(published: &apt::PublishedHashes, p: &ResolvedPackage, sha256: &str) -> bool {
    published
        .get(&(p.name.clone(), p.version.clone(), p.architecture.clone()))
        .is_some_and(|hs| hs.iter().any(|h| h == sha256))
}

/// All requests, in order, without duplicates.
fn flatten_requests(request_sets: &[Vec<String>]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    request_sets
        .iter()
        .flatten()
        .filter(|r| seen.insert(r.to_string()))
        .cloned()
        .collect()
}

/// The published bundle already holds exactly this closure for these requests, intact.
fn up_to_date(
    target: &Path,
    pgs: &[PostgresRelease],
    request_sets: &[Vec<String>],
    closure: &BTreeSet<ResolvedPackage>,
    architecture: &str,
) -> Option<Manifest> {
    let old = Manifest::load(target).ok()?;
    let old_set: BTreeSet<(String, String, String)> = old
        .debs
        .iter()
        .map(|f| (f.package.clone(), f.version.clone(), f.architecture.clone()))
        .collect();
    let new_set: BTreeSet<(String, String, String)> = closure
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.architecture.clone()))
        .collect();
    let same = old.postgres == pgs
        && old.requested == flatten_requests(request_sets)
        && old.architecture == architecture
        && old_set == new_set;
    (same && old.verify(target).is_ok()).then_some(old)
}

/// Build (or rebuild) the bundle. `progress` receives one line per step.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildSummary, BundleError> {
    let start = Instant::now();
    if opts.postgres_versions.is_empty() {
        return Err(BundleError::BadPostgresVersion {
            version: String::new(),
        });
    }
    let target = &opts.bundle_dir;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BundleError::NotABundle {
            path: target.clone(),
        })?
        .to_string();
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;

    // Refuse to replace a directory that is not ours: it must hold a manifest, or be empty
    // apart from the private apt state (an interrupted first build).
    if target.exists() {
        let names: Vec<String> = std::fs::read_dir(target)
            .map_err(io("read", target))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let ours =
            names.iter().any(|n| n == MANIFEST_FILE) || names.iter().all(|n| n == APT_STATE_DIR);
        if !ours {
            return Err(BundleError::NotABundle {
                path: target.clone(),
            });
        }
    }

    let _lock = lock(&parent.join(format!(".{name}.lock")), target)?;

    // Stale temporary directories of interrupted builds (we hold the lock: none is live).
    let tmp_prefix = format!(".{name}.tmp-");
    if let Ok(rd) = std::fs::read_dir(&parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&tmp_prefix) {
                progress(&format!("removing stale {}", e.path().display()));
                std::fs::remove_dir_all(e.path()).map_err(io("remove", &e.path()))?;
            }
        }
    }

    // Private apt state inside the bundle directory (kept across builds: lists and archives).
    std::fs::create_dir_all(target).map_err(io("create", target))?;
    let apt = PrivateApt::new(&target.join(APT_STATE_DIR), &opts.architecture);
    let sources_text = private_sources(&opts.sources, &opts.codename)?;
    apt.prepare(&sources_text)?;
    progress("updating package lists (private apt state)");
    apt.update()?;

    // Resolve versions and closures.
    let mut queried: Vec<String> = vec!["libpq5".into()];
    for v in &opts.postgres_versions {
        let p = format!("postgresql-{}", postgres_major(v)?);
        if !queried.contains(&p) {
            queried.push(p);
        }
    }
    let madison = apt.madison_many(&queried.iter().map(String::as_str).collect::<Vec<_>>())?;
    let mut pgs = Vec::new();
    for v in &opts.postgres_versions {
        let major = postgres_major(v)?;
        let package = format!("postgresql-{major}");
        let pg = PostgresRelease {
            version: v.clone(),
            debian_version: match_version(&madison, &package, v)?,
            major,
        };
        progress(&format!(
            "{package} {} -> {}",
            pg.version, pg.debian_version
        ));
        pgs.push(pg);
    }
    let libpq_versions = madison_versions(&madison, "libpq5");
    let mut request_sets = Vec::new();
    let mut closure: BTreeSet<ResolvedPackage> = BTreeSet::new();
    for pg in &pgs {
        let req = requests_for(pg, libpq_versions.contains(&pg.debian_version));
        let pkgs = apt.resolve(&req)?;
        closure.extend(pkgs);
        request_sets.push(req);
    }
    // Sanity: the pinned server packages are in the closure.
    for pg in &pgs {
        let n = format!("postgresql-{}", pg.major);
        if !closure
            .iter()
            .any(|p| p.name == n && p.version == pg.debian_version)
        {
            return Err(BundleError::VersionNotFound {
                package: n,
                version: pg.debian_version.clone(),
                available: "(apt did not select it)".into(),
            });
        }
    }

    if let Some(m) = up_to_date(target, &pgs, &request_sets, &closure, &opts.architecture) {
        progress(&format!(
            "{} packages in the closure; the bundle is up to date",
            closure.len()
        ));
        return Ok(BuildSummary {
            bundle_dir: target.clone(),
            packages: m.debs.len(),
            bytes: m.total_size(),
            downloaded: 0,
            elapsed: start.elapsed(),
            postgres: pgs,
            up_to_date: true,
        });
    }

    // Cached archives must match the hashes of the signed indexes (a damaged cache file is
    // dropped and downloaded again; apt itself only compares sizes of cached files).
    let published = apt.published_hashes(&closure)?;
    let archives = apt.archives_dir();
    let mut cached = 0;
    for p in &closure {
        let f = archives.join(p.apt_cache_file_name());
        if !f.is_file() {
            continue;
        }
        let (_, sha) = hash_file(&f)?;
        if is_published(&published, p, &sha) {
            cached += 1;
        } else {
            progress(&format!("dropping damaged cache file {}", f.display()));
            std::fs::remove_file(&f).map_err(io("remove", &f))?;
        }
    }
    let downloaded = closure.len() - cached;
    progress(&format!(
        "{} packages in the closure; {} to download",
        closure.len(),
        downloaded
    ));
    if downloaded > 0 {
        for req in &request_sets {
            apt.download(req)?;
        }
    }

    // Assemble the repository in a temporary directory next to the target.
    let tmp = parent.join(format!("{tmp_prefix}{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(io("create", &tmp))?;
    let plan = Plan {
        closure,
        published,
        pgs,
        request_sets,
    };
    let result = assemble(opts, &apt, &plan, &tmp, progress);
    let Plan { closure, pgs, .. } = plan;
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };

    // Prune cached archives that are no longer part of the closure.
    let keep: BTreeSet<String> = closure.iter().map(|p| p.apt_cache_file_name()).collect();
    if let Ok(rd) = std::fs::read_dir(&archives) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".deb") && !keep.contains(&n) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    // Swap the new repository in; carry the private apt state over.
    progress(&format!("installing the bundle at {}", target.display()));
    if exchange(&tmp, target)? {
        // `tmp` now holds the previous bundle (with .apt).
        std::fs::rename(tmp.join(APT_STATE_DIR), target.join(APT_STATE_DIR))
            .map_err(io("move the apt state into", target))?;
        std::fs::remove_dir_all(&tmp).map_err(io("remove the previous bundle", &tmp))?;
    } else {
        let old = parent.join(format!("{tmp_prefix}{}-old", std::process::id()));
        std::fs::rename(target, &old).map_err(io("move aside", target))?;
        std::fs::rename(&tmp, target).map_err(io("rename into place", target))?;
        std::fs::rename(old.join(APT_STATE_DIR), target.join(APT_STATE_DIR))
            .map_err(io("move the apt state into", target))?;
        std::fs::remove_dir_all(&old).map_err(io("remove the previous bundle", &old))?;
    }

    Ok(BuildSummary {
        bundle_dir: target.clone(),
        packages: manifest.debs.len(),
        bytes: manifest.total_size(),
        downloaded,
        elapsed: start.elapsed(),
        postgres: pgs,
        up_to_date: false,
    })
}

/// What a build resolved: the PostgreSQL versions, apt requests, the closure and its published
/// hashes.
struct Plan {
    closure: BTreeSet<ResolvedPackage>,
    published: apt::PublishedHashes,
    pgs: Vec<PostgresRelease>,
    request_sets: Vec<Vec<String>>,
}

/// Fill `tmp` with the .debs, the index and the manifest.
fn assemble(
    opts: &BuildOptions,
    apt: &PrivateApt,
    plan: &Plan,
    tmp: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, BundleError> {
    let Plan {
        closure,
        published,
        pgs,
        request_sets,
    } = plan;
    let archives = apt.archives_dir();
    let mut debs = Vec::new();
    for p in closure {
        let from = archives.join(p.apt_cache_file_name());
        if !from.is_file() {
            return Err(BundleError::MissingArchive {
                package: p.name.clone(),
                version: p.version.clone(),
                path: from,
            });
        }
        let name = p.bundle_file_name();
        let to = tmp.join(&name);
        link_or_copy(&from, &to)?;
        let (size, sha256) = hash_file(&to)?;
        if !is_published(published, p, &sha256) {
            return Err(BundleError::Corrupt {
                path: from,
                message: format!(
                    "sha256 {sha256} differs from the package index of the sources for {} {}",
                    p.name, p.version
                ),
            });
        }
        debs.push(BundleFile {
            name,
            package: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
            size,
            sha256,
        });
    }
    debs.sort_by(|a, b| a.name.cmp(&b.name));

    progress("writing the repository index (apt-ftparchive)");
    let packages = run_tool(tmp, "apt-ftparchive", &["packages", "."])?;
    std::fs::write(tmp.join("Packages"), &packages).map_err(io("write", &tmp.join("Packages")))?;
    let gz = run_tool(tmp, "gzip", &["-9", "-n", "-c", "Packages"])?;
    std::fs::write(tmp.join("Packages.gz"), &gz).map_err(io("write", &tmp.join("Packages.gz")))?;
    let release = run_tool(
        tmp,
        "apt-ftparchive",
        &[
            "-o",
            "APT::FTPArchive::Release::Origin=pgdeploy",
            "-o",
            "APT::FTPArchive::Release::Label=pgdeploy bundle",
            "-o",
            &format!(
                "APT::FTPArchive::Release::Architectures={}",
                opts.architecture
            ),
            "release",
            ".",
        ],
    )?;
    std::fs::write(tmp.join("Release"), &release).map_err(io("write", &tmp.join("Release")))?;
    let mut index = Vec::new();
    for n in ["Packages", "Packages.gz", "Release"] {
        let (size, sha256) = hash_file(&tmp.join(n))?;
        index.push(BundleFile {
            name: n.into(),
            package: String::new(),
            version: String::new(),
            architecture: String::new(),
            size,
            sha256,
        });
    }

    // Key package versions.
    let mut key_names: Vec<String> = Vec::new();
    for pg in pgs {
        for n in [
            format!("postgresql-{}", pg.major),
            format!("postgresql-client-{}", pg.major),
        ] {
            if !key_names.contains(&n) {
                key_names.push(n);
            }
        }
    }
    key_names.extend(
        ["libpq5", "postgresql-common"]
            .iter()
            .chain(EXTRA_PACKAGES.iter())
            .map(|s| s.to_string()),
    );
    let mut key_packages = BTreeMap::new();
    for n in key_names {
        let vs: Vec<String> = closure
            .iter()
            .filter(|p| p.name == n)
            .map(|p| p.version.clone())
            .collect();
        key_packages.insert(n, vs);
    }

    // Debian release from the Release files of the sources.
    let releases = apt.releases();
    let main = releases
        .iter()
        .find(|r| r.codename == opts.codename)
        .or_else(|| releases.first());
    let mut suites: Vec<String> = releases.iter().map(|r| r.codename.clone()).collect();
    suites.sort();
    suites.dedup();
    let debian_release = DebianRelease {
        codename: opts.codename.clone(),
        version: main.map(|r| r.version.clone()).unwrap_or_default(),
        suites,
    };

    let requested = flatten_requests(request_sets);

    let manifest = Manifest {
        format: manifest::MANIFEST_FORMAT,
        built_at: manifest::rfc3339_utc(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        architecture: opts.architecture.clone(),
        debian_release,
        postgres: pgs.to_vec(),
        requested,
        key_packages,
        debs,
        index,
    };
    manifest.save(tmp)?;
    Ok(manifest)
}

/// `pgdeploy bundle`: [`build`] on a blocking thread, off the async runtime (it downloads and
/// hashes for a while). `progress` receives one line per step.
pub async fn build_async(
    opts: BuildOptions,
    mut progress: impl FnMut(&str) + Send + 'static,
) -> miette::Result<BuildSummary> {
    let summary = tokio::task::spawn_blocking(move || build(&opts, &mut progress))
        .await
        .map_err(|e| miette::miette!("bundle build task failed: {e}"))??;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_sources_are_used_as_written() {
        let text = private_sources(
            &SourceChoice::Given(vec![
                "deb [signed-by=/k.gpg] http://m.example/mirror bookworm main\n\
                 deb-src http://m.example/mirror bookworm main"
                    .into(),
                "Types: deb\nURIs: http://m.example/sec\nSuites: bookworm-security\nComponents: main\n"
                    .into(),
            ]),
            "bookworm",
        )
        .unwrap();
        let back = parse_deb822(&text, "x").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].uris, ["http://m.example/mirror"]);
        assert_eq!(back[0].option("Signed-By"), Some("/k.gpg"));
        assert_eq!(back[1].suites, ["bookworm-security"]);
    }

    #[test]
    fn no_debian_source_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sources.list.d")).unwrap();
        std::fs::write(
            d.path().join("sources.list.d/vendor.list"),
            "deb https://vendor.example/apt stable main\n",
        )
        .unwrap();
        let e = private_sources(&SourceChoice::System(d.path().into()), "bookworm").unwrap_err();
        assert!(matches!(e, BundleError::NoDebianSources { .. }), "{e}");
        assert!(e.to_string().contains("sources.list.d"), "{e}");
        let e = private_sources(
            &SourceChoice::Given(vec!["deb-src http://m.example/debian bookworm main".into()]),
            "bookworm",
        )
        .unwrap_err();
        assert!(e.to_string().contains("packages.debian_sources"), "{e}");
    }

    #[test]
    fn requests_pin_server_client_and_libpq() {
        let pg = PostgresRelease {
            version: "15.18".into(),
            major: "15".into(),
            debian_version: "15.18-0+deb12u1".into(),
        };
        let r = requests_for(&pg, true);
        assert_eq!(
            &r[..3],
            [
                "postgresql-15=15.18-0+deb12u1",
                "postgresql-client-15=15.18-0+deb12u1",
                "libpq5=15.18-0+deb12u1"
            ]
        );
        assert!(r.contains(&"python3-etcd".to_string()));
        assert_eq!(
            flatten_requests(&[r.clone(), vec!["patroni".into(), "x=1".into()]]).len(),
            r.len() + 1
        );
    }
}
