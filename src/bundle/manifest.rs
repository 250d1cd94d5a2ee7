//! `manifest.json`: what a bundle holds (resolved versions, every file with size and SHA-256).

use super::BundleError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MANIFEST_FORMAT: u32 = 1;

/// A PostgreSQL minor in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresRelease {
    /// As requested, e.g. "15.18".
    pub version: String,
    pub major: String,
    /// The Debian package version, e.g. "15.18-0+deb12u1".
    pub debian_version: String,
}

/// One file of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// File name in the bundle directory (no subdirectories).
    pub name: String,
    /// Package name and version for `.deb` files; empty for the index files.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub package: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    pub size: u64,
    pub sha256: String,
}

/// The Debian release the bundle was resolved from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianRelease {
    pub codename: String,
    /// Point release of the main suite, e.g. "12.15".
    pub version: String,
    /// Suites used, e.g. ["bookworm", "bookworm-security", "bookworm-updates"].
    pub suites: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// RFC 3339 UTC time of the build.
    pub built_at: String,
    pub architecture: String,
    pub debian_release: DebianRelease,
    /// PostgreSQL minors; the first is the inventory's `postgres.version`.
    pub postgres: Vec<PostgresRelease>,
    /// The packages requested (name=version where pinned).
    pub requested: Vec<String>,
    /// Versions of the key packages (postgresql-15, patroni, etcd-server, haproxy, ...).
    pub key_packages: BTreeMap<String, Vec<String>>,
    /// Every `.deb`, sorted by name.
    pub debs: Vec<BundleFile>,
    /// The repository index files (`Packages`, `Packages.gz`, `Release`).
    pub index: Vec<BundleFile>,
}

impl Manifest {
    /// Read `<dir>/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Io {
            what: "read the bundle manifest (build it with `pgdeploy bundle`)".into(),
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| BundleError::BadManifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(BundleError::BadManifest {
                path,
                message: format!(
                    "format {} is not supported (expected {MANIFEST_FORMAT}); rebuild the bundle",
                    m.format
                ),
            });
        }
        Ok(m)
    }

    /// Write `<dir>/manifest.json`.
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| BundleError::BadManifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, text + "\n").map_err(|source| BundleError::Io {
            what: "write the bundle manifest".into(),
            path,
            source,
        })
    }

    /// Every file of the repository: the `.deb`s, then the index files.
    pub fn files(&self) -> impl Iterator<Item = &BundleFile> {
        self.debs.iter().chain(self.index.iter())
    }

    /// Total size of all files in bytes.
    pub fn total_size(&self) -> u64 {
        self.files().map(|f| f.size).sum()
    }

    /// The files a host lacks, given what it has (file name -> SHA-256, lowercase hex). A file
    /// whose hash differs counts as missing.
    pub fn missing_from<'a>(&'a self, present: &BTreeMap<String, String>) -> Vec<&'a BundleFile> {
        self.files()
            .filter(|f| present.get(&f.name) != Some(&f.sha256))
            .collect()
    }

    /// Files present on a host (name -> SHA-256) that the bundle no longer contains.
    pub fn extra_in<'a>(&self, present: &'a BTreeMap<String, String>) -> Vec<&'a str> {
        present
            .keys()
            .filter(|n| n.as_str() != MANIFEST_FILE && !self.files().any(|f| &f.name == *n))
            .map(String::as_str)
            .collect()
    }

    /// The Debian version of the first (inventory) PostgreSQL minor.
    pub fn postgres_debian_version(&self) -> Option<&str> {
        self.postgres.first().map(|p| p.debian_version.as_str())
    }

    /// Debian version of `package` in the bundle (the first, if there are several).
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.debs
            .iter()
            .find(|f| f.package == package)
            .map(|f| f.version.as_str())
    }

    /// Check every file in `dir` against its size and SHA-256.
    pub fn verify(&self, dir: &Path) -> Result<(), BundleError> {
        for f in self.files() {
            let path = dir.join(&f.name);
            let (size, sha) = hash_file(&path)?;
            if size != f.size || sha != f.sha256 {
                return Err(BundleError::Corrupt {
                    path,
                    message: format!(
                        "expected {} bytes sha256 {}, found {size} bytes sha256 {sha}",
                        f.size, f.sha256
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Size and SHA-256 (lowercase hex) of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), BundleError> {
    let io = |source| BundleError::Io {
        what: "hash".into(),
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// RFC 3339 UTC timestamp of a time given in seconds since the Unix epoch.
pub fn rfc3339_utc(secs: u64) -> String {
    crate::clock::utc_rfc3339_secs(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        std::fs::write(dir.join("a_1.0-1_amd64.deb"), b"package a").unwrap();
        std::fs::write(dir.join("Packages"), b"Package: a\n").unwrap();
        let (sa, ha) = hash_file(&dir.join("a_1.0-1_amd64.deb")).unwrap();
        let (sp, hp) = hash_file(&dir.join("Packages")).unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            built_at: rfc3339_utc(0),
            architecture: "amd64".into(),
            debian_release: DebianRelease {
                codename: "bookworm".into(),
                version: "12.15".into(),
                suites: vec!["bookworm".into()],
            },
            postgres: vec![PostgresRelease {
                version: "15.18".into(),
                major: "15".into(),
                debian_version: "15.18-0+deb12u1".into(),
            }],
            requested: vec!["a".into()],
            key_packages: BTreeMap::from([("a".to_string(), vec!["1.0-1".to_string()])]),
            debs: vec![BundleFile {
                name: "a_1.0-1_amd64.deb".into(),
                package: "a".into(),
                version: "1.0-1".into(),
                architecture: "amd64".into(),
                size: sa,
                sha256: ha,
            }],
            index: vec![BundleFile {
                name: "Packages".into(),
                package: String::new(),
                version: String::new(),
                architecture: String::new(),
                size: sp,
                sha256: hp,
            }],
        }
    }

    #[test]
    fn round_trip_verify_and_diff() {
        let d = tempfile::tempdir().unwrap();
        let m = sample(d.path());
        assert_eq!(
            m.debs[0].sha256,
            // sha256("package a")
            hex::encode(Sha256::digest(b"package a"))
        );
        m.save(d.path()).unwrap();
        let back = Manifest::load(d.path()).unwrap();
        assert_eq!(back, m);
        back.verify(d.path()).unwrap();
        assert_eq!(back.postgres_debian_version(), Some("15.18-0+deb12u1"));
        assert_eq!(back.version_of("a"), Some("1.0-1"));
        assert_eq!(back.total_size(), 9 + 11);

        // a host with the right .deb, a stale Packages and an extra file
        let present = BTreeMap::from([
            ("a_1.0-1_amd64.deb".to_string(), m.debs[0].sha256.clone()),
            ("Packages".to_string(), "00".to_string()),
            ("old_0.9_all.deb".to_string(), "11".to_string()),
        ]);
        let missing: Vec<&str> = m
            .missing_from(&present)
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(missing, ["Packages"]);
        assert_eq!(m.extra_in(&present), ["old_0.9_all.deb"]);

        // a changed file fails verification, naming it
        std::fs::write(d.path().join("a_1.0-1_amd64.deb"), b"package b").unwrap();
        let e = back.verify(d.path()).unwrap_err().to_string();
        assert!(e.contains("a_1.0-1_amd64.deb"), "{e}");
    }

    #[test]
    fn load_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        std::fs::write(d.path().join(MANIFEST_FILE), "{\"format\": 1}").unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("manifest.json"), "{e}");
        let mut m = sample(d.path());
        m.format = 99;
        m.save(d.path()).unwrap();
        let e = Manifest::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_642_002), "2026-11-25T21:26:42Z");
    }
}
