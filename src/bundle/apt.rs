//! apt with private state: an empty dpkg status, its own lists, cache, archives and sources, so
//! the control machine's own apt state is never read for resolution nor written.

use super::BundleError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A private apt state directory (inside the bundle directory: `<bundle>/.apt`).
#[derive(Debug, Clone)]
pub struct PrivateApt {
    pub dir: PathBuf,
    pub architecture: String,
}

/// One package of a resolved closure.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

impl ResolvedPackage {
    /// File name apt gives the downloaded archive in its cache (`:` of an epoch quoted).
    pub fn apt_cache_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            apt_quote(&self.name),
            apt_quote(&self.version),
            apt_quote(&self.architecture)
        )
    }

    /// File name in the bundle: the Debian pool convention (no epoch), so no `%` or `:` appears
    /// in a `file:` URI.
    pub fn bundle_file_name(&self) -> String {
        let ver = self
            .version
            .split_once(':')
            .map(|(_, v)| v)
            .unwrap_or(&self.version);
        format!("{}_{}_{}.deb", self.name, ver, self.architecture)
    }
}

/// apt's quoting of archive file names (`%`, `:` and `_` become `%xx`).
fn apt_quote(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '%' | ':' | '_') || !c.is_ascii_graphic() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl PrivateApt {
    pub fn new(dir: &Path, architecture: &str) -> PrivateApt {
        PrivateApt {
            dir: dir.to_path_buf(),
            architecture: architecture.to_string(),
        }
    }

    pub fn archives_dir(&self) -> PathBuf {
        self.dir.join("archives")
    }
    pub fn lists_dir(&self) -> PathBuf {
        self.dir.join("lists")
    }
    pub fn sources_file(&self) -> PathBuf {
        self.dir.join("sources.list.d").join("pgdeploy.sources")
    }

    /// Create the layout, reset the dpkg status to empty and write the sources file.
    pub fn prepare(&self, sources_deb822: &str) -> Result<(), BundleError> {
        for d in [
            "lists/partial",
            "archives/partial",
            "cache",
            "state",
            "log",
            "sources.list.d",
            "preferences.d",
        ] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(|source| BundleError::Io {
                what: "create the private apt state".into(),
                path: p,
                source,
            })?;
        }
        for (p, text) in [
            (self.dir.join("status"), ""),
            (self.dir.join("sources.list"), ""),
            (self.sources_file(), sources_deb822),
        ] {
            std::fs::write(&p, text).map_err(|source| BundleError::Io {
                what: "write the private apt state".into(),
                path: p,
                source,
            })?;
        }
        Ok(())
    }

    /// The `-o` options that point apt at the private state.
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        let arch = &self.architecture;
        [
            format!("Dir::State={d}/state"),
            format!("Dir::State::status={d}/status"),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            format!("Dir::Cache::archives={d}/archives"),
            format!("Dir::Log={d}/log"),
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            format!("Dir::Etc::sourceparts={d}/sources.list.d"),
            "Dir::Etc::preferences=/dev/null".into(),
            format!("Dir::Etc::preferencesparts={d}/preferences.d"),
            format!("APT::Architecture={arch}"),
            format!("APT::Architectures={arch}"),
            "APT::Default-Release=".into(),
            "APT::Install-Recommends=false".into(),
            "APT::Install-Suggests=false".into(),
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".into(),
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false".into(),
            "Debug::NoLocking=1".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String, BundleError> {
        let mut cmd = Command::new(program);
        cmd.args(self.options())
            .args(args)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        let shown = format!("{program} {}", args.join(" "));
        let out = cmd.output().map_err(|source| BundleError::Spawn {
            command: shown.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(BundleError::Command {
                command: shown,
                status: out.status.to_string(),
                output: tail(&String::from_utf8_lossy(&out.stderr), 30),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `apt-get update` into the private lists.
    pub fn update(&self) -> Result<(), BundleError> {
        self.run("apt-get", &["update", "-q"]).map(|_| ())
    }

    /// `apt-cache madison PACKAGE` output.
    pub fn madison(&self, package: &str) -> Result<String, BundleError> {
        self.madison_many(&[package])
    }

    /// `apt-cache madison P1 P2 ...` output (one cache load for several packages).
    pub fn madison_many(&self, packages: &[&str]) -> Result<String, BundleError> {
        let mut args = vec!["madison"];
        args.extend_from_slice(packages);
        self.run("apt-cache", &args)
    }

    /// The closure apt installs for `requests` on an empty system (`apt-get install -s`).
    pub fn resolve(&self, requests: &[String]) -> Result<Vec<ResolvedPackage>, BundleError> {
        let mut args = vec!["install", "-s", "-q", "--no-install-recommends"];
        args.extend(requests.iter().map(String::as_str));
        let out = self.run("apt-get", &args)?;
        Ok(parse_simulation(&out))
    }

    /// Download `requests` (and their closure) into the private archives; apt checks every
    /// file against the signed index.
    pub fn download(&self, requests: &[String]) -> Result<(), BundleError> {
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--download-only",
            "--no-install-recommends",
        ];
        args.extend(requests.iter().map(String::as_str));
        self.run("apt-get", &args).map(|_| ())
    }

    /// SHA-256 of each package as published in the (signed) indexes: `apt-cache show`.
    pub fn published_hashes<'a>(
        &self,
        packages: impl IntoIterator<Item = &'a ResolvedPackage>,
    ) -> Result<PublishedHashes, BundleError> {
        let specs: Vec<String> = packages
            .into_iter()
            .map(|p| format!("{}:{}={}", p.name, p.architecture, p.version))
            .collect();
        if specs.is_empty() {
            return Ok(PublishedHashes::default());
        }
        let mut args = vec!["show"];
        args.extend(specs.iter().map(String::as_str));
        Ok(parse_published_hashes(&self.run("apt-cache", &args)?))
    }

    /// Release files of the private lists: (Origin, Label, Codename, Version) of each.
    pub fn releases(&self) -> Vec<ReleaseInfo> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.lists_dir()) else {
            return out;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with("_InRelease") || n.ends_with("_Release"))
            })
            .collect();
        files.sort();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                out.push(parse_release(&text));
            }
        }
        out
    }
}

/// (package, version, architecture) -> SHA-256 values published for it.
pub type PublishedHashes = std::collections::BTreeMap<(String, String, String), Vec<String>>;

/// Parse `apt-cache show` paragraphs into published SHA-256 values.
pub fn parse_published_hashes(text: &str) -> PublishedHashes {
    let mut out = PublishedHashes::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
                .map(|v| v.trim().to_string())
        };
        if let (Some(p), Some(v), Some(a), Some(h)) = (
            field("Package"),
            field("Version"),
            field("Architecture"),
            field("SHA256"),
        ) {
            let e = out.entry((p, v, a)).or_default();
            if !e.contains(&h) {
                e.push(h);
            }
        }
    }
    out
}

/// The interesting fields of a Release file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseInfo {
    pub origin: String,
    pub label: String,
    pub suite: String,
    pub codename: String,
    pub version: String,
}

pub fn parse_release(text: &str) -> ReleaseInfo {
    let mut r = ReleaseInfo::default();
    for line in text.lines() {
        if line.is_empty() {
            break; // end of the first paragraph (InRelease: after the PGP header)
        }
        if let Some((k, v)) = line.split_once(": ") {
            let v = v.trim().to_string();
            match k {
                "Origin" => r.origin = v,
                "Label" => r.label = v,
                "Suite" => r.suite = v,
                "Codename" => r.codename = v,
                "Version" => r.version = v,
                _ => {}
            }
        }
    }
    // An InRelease file starts with "-----BEGIN PGP SIGNED MESSAGE-----\nHash: ...\n\n".
    if r.origin.is_empty() && text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        if let Some((_, body)) = text.split_once("\n\n") {
            return parse_release(body);
        }
    }
    r
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parse `apt-get install -s` output: `Inst NAME [OLD] (VERSION ORIGIN... [ARCH])`.
pub fn parse_simulation(out: &str) -> Vec<ResolvedPackage> {
    let mut pkgs = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some(name) = rest.split_whitespace().next() else {
            continue;
        };
        let Some(open) = rest.find('(') else { continue };
        let Some(close) = rest[open..].find(')') else {
            continue;
        };
        let inner = &rest[open + 1..open + close];
        let mut toks = inner.split_whitespace();
        let Some(version) = toks.next() else { continue };
        let arch = toks
            .next_back()
            .map(|a| a.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or("");
        pkgs.push(ResolvedPackage {
            name: name.to_string(),
            version: version.to_string(),
            architecture: arch.to_string(),
        });
    }
    pkgs
}

/// Versions of `package` in `apt-cache madison` output (binary entries), in madison's order
/// (highest first), without duplicates.
pub fn madison_versions(madison: &str, package: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in madison.lines() {
        let f: Vec<&str> = line.split('|').map(str::trim).collect();
        if f.len() != 3 || f[0] != package || !f[2].ends_with("Packages") {
            continue;
        }
        if !out.iter().any(|v| v == f[1]) {
            out.push(f[1].to_string());
        }
    }
    out
}

/// The upstream part of a Debian version: no epoch, no revision.
fn upstream(v: &str) -> &str {
    let v = v.split_once(':').map(|(_, r)| r).unwrap_or(v);
    v.rsplit_once('-').map(|(u, _)| u).unwrap_or(v)
}

/// The PostgreSQL major of a "MAJOR.MINOR" (or full Debian) version, e.g. "15".
pub fn postgres_major(version: &str) -> Result<String, BundleError> {
    let major = upstream(version).split('.').next().unwrap_or("");
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        return Err(BundleError::BadPostgresVersion {
            version: version.to_string(),
        });
    }
    Ok(major.to_string())
}

/// Pick the Debian version of `package` for `wanted` from madison output. `wanted` is either a
/// full Debian version (exact match) or "MAJOR.MINOR", which matches a version whose upstream part
/// is exactly that (optionally followed by `+...`); the highest such version wins.
pub fn match_version(madison: &str, package: &str, wanted: &str) -> Result<String, BundleError> {
    let available = madison_versions(madison, package);
    let found = if wanted.contains('-') {
        available.iter().find(|v| *v == wanted)
    } else {
        available.iter().find(|v| {
            let u = upstream(v);
            u == wanted
                || u.strip_prefix(wanted)
                    .is_some_and(|rest| rest.starts_with('+'))
        })
    };
    found.cloned().ok_or_else(|| BundleError::VersionNotFound {
        package: package.to_string(),
        version: wanted.to_string(),
        available: if available.is_empty() {
            "none".into()
        } else {
            available.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADISON: &str = "\
postgresql-15 | 15.20-0+deb12u1 | http://mirror.example/debian-security bookworm-security/main amd64 Packages
postgresql-15 | 15.18-0+deb12u1 | http://mirror.example/debian bookworm/main amd64 Packages
postgresql-15 | 15.18-0+deb12u1 | http://mirror.example/debian bookworm/main Sources
";

    #[test]
    fn minor_resolves_to_debian_version() {
        assert_eq!(
            match_version(MADISON, "postgresql-15", "15.18").unwrap(),
            "15.18-0+deb12u1"
        );
        assert_eq!(
            match_version(MADISON, "postgresql-15", "15.20").unwrap(),
            "15.20-0+deb12u1"
        );
        assert_eq!(
            match_version(MADISON, "postgresql-15", "15.18-0+deb12u1").unwrap(),
            "15.18-0+deb12u1"
        );
    }

    #[test]
    fn missing_minor_lists_available_versions() {
        let e = match_version(MADISON, "postgresql-15", "15.19").unwrap_err();
        assert_eq!(
            e.to_string(),
            "postgresql-15 15.19 not found in the package sources; available: \
             15.20-0+deb12u1, 15.18-0+deb12u1"
        );
        // "15.1" must not match 15.18
        assert!(match_version(MADISON, "postgresql-15", "15.1").is_err());
        let e = match_version("", "postgresql-16", "16.4").unwrap_err();
        assert!(e.to_string().ends_with("available: none"), "{e}");
    }

    #[test]
    fn highest_matching_revision_wins_and_plus_suffix_matches() {
        let m = "\
postgresql-15 | 15.18-1.pgdg120+1 | http://x/apt bookworm-pgdg/main amd64 Packages
postgresql-15 | 15.18-0+deb12u1 | http://x/debian bookworm/main amd64 Packages
libfoo | 1:2.0+dfsg-1 | http://x/debian bookworm/main amd64 Packages
";
        assert_eq!(
            match_version(m, "postgresql-15", "15.18").unwrap(),
            "15.18-1.pgdg120+1"
        );
        assert_eq!(match_version(m, "libfoo", "2.0").unwrap(), "1:2.0+dfsg-1");
    }

    #[test]
    fn major_of_versions() {
        assert_eq!(postgres_major("15.18").unwrap(), "15");
        assert_eq!(postgres_major("16.4-1").unwrap(), "16");
        assert!(postgres_major("latest").is_err());
        assert!(postgres_major("").is_err());
    }

    #[test]
    fn simulation_output_parses() {
        let out = "\
NOTE: This is only a simulation!
Inst gcc-12-base (12.2.0-14+deb12u1 Debian:12.15/oldstable [amd64])
Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
Inst zlib1g (1:1.2.13.dfsg-1 Debian:12.15/oldstable [amd64])
Inst perl-modules-5.36 (5.36.0-7+deb12u4 Debian-Security:12/oldstable-security [all])
Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])
";
        let p = parse_simulation(out);
        assert_eq!(p.len(), 4);
        assert_eq!(p[1].name, "libc6");
        assert_eq!(p[1].version, "2.36-9+deb12u14");
        assert_eq!(
            p[2].apt_cache_file_name(),
            "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"
        );
        assert_eq!(p[2].bundle_file_name(), "zlib1g_1.2.13.dfsg-1_amd64.deb");
        assert_eq!(p[3].architecture, "all");
    }

    #[test]
    fn published_hashes_parse() {
        let text = "Package: zlib1g\nVersion: 1:1.2.13.dfsg-1\nArchitecture: amd64\nSize: 86684\nSHA256: d7dd\nDescription: x\n more\n\nPackage: zlib1g\nVersion: 1:1.2.13.dfsg-1\nArchitecture: amd64\nSHA256: d7dd\n\nPackage: tzdata\nVersion: 2026f-0+deb12u1\nArchitecture: all\nSHA256: beef\n";
        let h = parse_published_hashes(text);
        assert_eq!(h.len(), 2);
        let k = (
            "zlib1g".to_string(),
            "1:1.2.13.dfsg-1".to_string(),
            "amd64".to_string(),
        );
        assert_eq!(h[&k], ["d7dd"]);
    }

    #[test]
    fn release_fields_from_inrelease() {
        let text = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nLabel: Debian\nSuite: oldstable\nVersion: 12.15\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n";
        let r = parse_release(text);
        assert_eq!(r.origin, "Debian");
        assert_eq!(r.codename, "bookworm");
        assert_eq!(r.version, "12.15");
    }
}
