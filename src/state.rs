//! The local state directory (`.pgdeploy/<cluster>/`: the CA, host certificates and keys,
//! the generated passwords, the journal) and how it is tied to the hosts it deployed.
//!
//! Every host gets a marker, `/etc/pgdeploy/state`, with the fingerprints of the CA and of
//! the passwords that deployed it (SHA-256; the passwords themselves never leave the
//! workstation in it). Preflight compares them, and the CA a host trusts, with the local
//! state: a workstation with another state (a fresh checkout, a lost directory) is refused
//! before anything changes, instead of rolling out a new CA and new passwords.
//!
//! `export` and `import` move the state to another workstation as one file (mode 0600).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the marker lives on every host.
pub const MARKER_PATH: &str = "/etc/pgdeploy/state";

/// SHA-256 fingerprint of a certificate (of its DER, as `openssl x509 -fingerprint -sha256`
/// prints it), or None when `pem` holds no certificate.
pub fn cert_fingerprint(pem: &str) -> Option<String> {
    let der = crate::pki::pem_to_der(pem).filter(|d| !d.is_empty())?;
    Some(colon_hex(&Sha256::digest(&der)))
}

fn colon_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Fingerprints of the generated secrets (the `secrets` value of the template context: name
/// to value), one per secret: domain-separated SHA-256 of the name and the value. One per
/// secret, so that a secret added by a newer pgdeploy is no mismatch.
pub fn secrets_fingerprints(secrets: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Value::Object(m) = secrets {
        for (k, v) in m {
            let mut h = Sha256::new();
            h.update(b"pgdeploy secret v1\n");
            h.update(k.as_bytes());
            h.update(b"\n");
            h.update(v.as_str().unwrap_or_default().as_bytes());
            out.insert(k.clone(), hex::encode(h.finalize()));
        }
    }
    out
}

/// The marker's content for a host.
pub fn marker(cluster: &str, ca_pem: &str, secrets: &Value) -> String {
    format!(
        "# Managed by pgdeploy: the state that deployed this host. `check` and `apply` refuse to\n\
         # run from a state directory with other fingerprints (see `pgdeploy state --help`).\n\
         cluster = {cluster}\n\
         ca_sha256 = {}\n{}",
        cert_fingerprint(ca_pem).unwrap_or_default(),
        secrets_fingerprints(secrets)
            .iter()
            .map(|(k, v)| format!("secret_sha256.{k} = {v}\n"))
            .collect::<String>()
    )
}

/// What the local state is, for comparison with the hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct Local {
    pub dir: PathBuf,
    pub ca: String,
    pub secrets: BTreeMap<String, String>,
}

/// What a host says about the state that deployed it: the CA it trusts and its marker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployed {
    /// Fingerprint of /etc/pgdeploy/tls/ca.crt (None: no CA there yet).
    pub ca: Option<String>,
    /// `ca_sha256` and the `secret_sha256.<name>` lines of the marker (none: no marker).
    pub marker_ca: Option<String>,
    pub marker_secrets: BTreeMap<String, String>,
}

impl Deployed {
    /// From the host's CA file and marker (either may be empty).
    pub fn parse(ca_pem: &str, marker: &str) -> Deployed {
        let field = |name: &str| {
            marker.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == name && !v.trim().is_empty()).then(|| v.trim().to_string())
            })
        };
        let marker_secrets = marker
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                let name = k.trim().strip_prefix("secret_sha256.")?;
                Some((name.to_string(), v.trim().to_string()))
            })
            .collect();
        Deployed {
            ca: cert_fingerprint(ca_pem),
            marker_ca: field("ca_sha256"),
            marker_secrets,
        }
    }
}

/// Why this host was deployed from another state, or None when it matches (or is new).
pub fn mismatch(local: &Local, host: &Deployed) -> Option<String> {
    let ca = host.ca.as_ref().or(host.marker_ca.as_ref());
    if let Some(ca) = ca {
        if *ca != local.ca {
            return Some(format!(
                "trusts the cluster CA sha256 {ca}, the local state ({}/tls/ca.crt) has {}",
                local.dir.display(),
                local.ca
            ));
        }
    }
    let differ: Vec<&str> = host
        .marker_secrets
        .iter()
        .filter(|(k, v)| local.secrets.get(*k).is_some_and(|l| l != *v))
        .map(|(k, _)| k.as_str())
        .collect();
    if !differ.is_empty() {
        return Some(format!(
            "was deployed with another {} than {}/secrets.json",
            differ.join(", "),
            local.dir.display(),
        ));
    }
    None
}

/// The file format of `state export`.
#[derive(Serialize, Deserialize)]
struct Archive {
    format: String,
    cluster: String,
    /// Relative path -> base64 content.
    files: BTreeMap<String, String>,
}

const FORMAT: &str = "pgdeploy-state/1";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    #[error("{0}")]
    Io(String),
    #[error("{path} is not a pgdeploy state file: {reason}")]
    #[diagnostic(help("give a file written by `pgdeploy state export`"))]
    BadArchive { path: PathBuf, reason: String },
    #[error("the state file is of cluster {archive}, the inventory's cluster is {inventory}")]
    #[diagnostic(help("import it with the inventory of that cluster"))]
    OtherCluster { archive: String, inventory: String },
    #[error("{dir} already holds another state (CA sha256 {local}; the file has {archive})")]
    #[diagnostic(help(
        "nothing was changed. If the local state never deployed anything (it was generated by a \
         check on a fresh checkout), run again with --replace; the old one is kept beside it"
    ))]
    Differs {
        dir: PathBuf,
        local: String,
        archive: String,
    },
    #[error("{0} exists")]
    #[diagnostic(help("choose another file name, or remove it first"))]
    Exists(PathBuf),
}

fn io(what: &str, p: &Path, e: std::io::Error) -> StateError {
    StateError::Io(format!("cannot {what} {}: {e}", p.display()))
}

fn collect(dir: &Path, rel: &Path, out: &mut BTreeMap<String, String>) -> Result<(), StateError> {
    let here = dir.join(rel);
    let entries = fs::read_dir(&here).map_err(|e| io("read", &here, e))?;
    for e in entries {
        let e = e.map_err(|e| io("read", &here, e))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        // Lock files and leftovers of an interrupted write are not state.
        if name.ends_with(".lock") || name.contains(".tmp") {
            continue;
        }
        let r = rel.join(&*name);
        let t = e.file_type().map_err(|e| io("read", &here, e))?;
        if t.is_dir() {
            collect(dir, &r, out)?;
        } else if t.is_file() {
            let p = dir.join(&r);
            let b = fs::read(&p).map_err(|e| io("read", &p, e))?;
            out.insert(
                r.to_string_lossy().into_owned(),
                base64::engine::general_purpose::STANDARD.encode(b),
            );
        }
    }
    Ok(())
}

/// Write the whole state directory into `to` (created, never overwritten, mode 0600).
/// Returns the number of files and the CA fingerprint.
pub fn export(state_dir: &Path, cluster: &str, to: &Path) -> Result<(usize, String), StateError> {
    let ca_pem = fs::read_to_string(state_dir.join("tls/ca.crt"))
        .map_err(|e| io("read", &state_dir.join("tls/ca.crt"), e))?;
    let fp = cert_fingerprint(&ca_pem).ok_or_else(|| StateError::BadArchive {
        path: state_dir.join("tls/ca.crt"),
        reason: "no certificate in it".into(),
    })?;
    let mut files = BTreeMap::new();
    collect(state_dir, Path::new(""), &mut files)?;
    let a = Archive {
        format: FORMAT.into(),
        cluster: cluster.into(),
        files,
    };
    let text = serde_json::to_vec_pretty(&a).map_err(|e| StateError::Io(e.to_string()))?;
    let mut f = open_new_private(to)?;
    f.write_all(&text)
        .and_then(|_| f.sync_all())
        .map_err(|e| io("write", to, e))?;
    Ok((a.files.len(), fp))
}

fn open_new_private(p: &Path) -> Result<fs::File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StateError::Exists(p.to_path_buf())
            } else {
                io("create", p, e)
            }
        })
}

/// What `import` did.
#[derive(Debug)]
pub struct Imported {
    pub files: usize,
    pub ca: String,
    /// Where a replaced local state was moved.
    pub kept_aside: Option<PathBuf>,
}

/// Put the state of `from` into `state_dir`. An existing state with the same CA is left as
/// it is (same files: nothing to do); another one is refused unless `replace`, and then moved
/// aside, never deleted.
pub fn import(
    state_dir: &Path,
    cluster: &str,
    from: &Path,
    replace: bool,
) -> Result<Imported, StateError> {
    let bad = |reason: String| StateError::BadArchive {
        path: from.to_path_buf(),
        reason,
    };
    let text = fs::read(from).map_err(|e| io("read", from, e))?;
    let a: Archive = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if a.format != FORMAT {
        return Err(bad(format!("format {:?}, expected {FORMAT}", a.format)));
    }
    if a.cluster != cluster {
        return Err(StateError::OtherCluster {
            archive: a.cluster,
            inventory: cluster.into(),
        });
    }
    let mut files = Vec::new();
    for (rel, b64) in &a.files {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!("unsafe path {rel:?}")));
        }
        let b = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(format!("{rel}: {e}")))?;
        files.push((p.to_path_buf(), b));
    }
    let ca_pem = files
        .iter()
        .find(|(p, _)| p == Path::new("tls/ca.crt"))
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .ok_or_else(|| bad("it holds no tls/ca.crt".into()))?;
    let ca = cert_fingerprint(&ca_pem).ok_or_else(|| bad("tls/ca.crt is no certificate".into()))?;
    let mut kept_aside = None;
    if let Ok(local_pem) = fs::read_to_string(state_dir.join("tls/ca.crt")) {
        let local = cert_fingerprint(&local_pem).unwrap_or_else(|| "(unreadable)".into());
        if local == ca && !replace {
            return Ok(Imported {
                files: 0,
                ca,
                kept_aside: None,
            });
        }
        if local != ca && !replace {
            return Err(StateError::Differs {
                dir: state_dir.to_path_buf(),
                local,
                archive: ca,
            });
        }
    }
    // Written into a new directory first, then renamed into place: never half a state, and
    // the state that was there is moved aside only once the new one is complete.
    let parent = state_dir
        .parent()
        .ok_or_else(|| StateError::Io("the state directory has no parent".into()))?;
    crate::secrets::ensure_private_dir(parent).map_err(|e| io("create", parent, e))?;
    let name = state_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.importing"));
    let _ = fs::remove_dir_all(&tmp);
    for (rel, b) in &files {
        let p = tmp.join(rel);
        if let Some(d) = p.parent() {
            crate::secrets::ensure_private_dir(d).map_err(|e| io("create", d, e))?;
        }
        crate::secrets::write_private(&p, b).map_err(|e| io("write", &p, e))?;
    }
    crate::secrets::ensure_private_dir(&tmp).map_err(|e| io("create", &tmp, e))?;
    if state_dir.exists() {
        let stamp = crate::clock::utc_now().replace([':', '.'], "");
        let aside = state_dir.with_file_name(format!("{name}.replaced-{stamp}"));
        fs::rename(state_dir, &aside).map_err(|e| io("move aside", state_dir, e))?;
        kept_aside = Some(aside);
    }
    fs::rename(&tmp, state_dir).map_err(|e| io("move into place", state_dir, e))?;
    Ok(Imported {
        files: files.len(),
        ca,
        kept_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(dir: &Path) -> String {
        let pki = crate::pki::Pki::load_or_create(dir).unwrap();
        crate::secrets::Secrets::load_or_create(dir).unwrap();
        pki.ca_cert_pem().to_string()
    }

    #[test]
    fn fingerprints_and_marker() {
        let d = tempfile::tempdir().unwrap();
        let pem = state(d.path());
        let fp = cert_fingerprint(&pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(cert_fingerprint("junk"), None);
        let s = json!({"a": "x", "b": "y"});
        let s2 = json!({"b": "y", "a": "x"});
        assert_eq!(secrets_fingerprints(&s), secrets_fingerprints(&s2));
        assert_ne!(
            secrets_fingerprints(&s),
            secrets_fingerprints(&json!({"a": "x", "b": "z"}))
        );
        let m = marker("c", &pem, &s);
        assert!(!m.contains("\"x\"") && !m.contains("= x"), "{m}");
        let dep = Deployed::parse(&pem, &m);
        let local = Local {
            dir: d.path().into(),
            ca: fp.clone(),
            secrets: secrets_fingerprints(&s),
        };
        assert_eq!(mismatch(&local, &dep), None);
        // A fresh host: nothing to compare.
        assert_eq!(mismatch(&local, &Deployed::parse("", "")), None);
        // Another CA on the host.
        let other = tempfile::tempdir().unwrap();
        let other_pem = state(other.path());
        let e = mismatch(&local, &Deployed::parse(&other_pem, "")).unwrap();
        assert!(e.contains("trusts the cluster CA sha256"), "{e}");
        assert!(e.contains(&fp), "{e}");
        // Same CA, other passwords.
        let m2 = marker("c", &pem, &json!({"a": "x", "b": "z"}));
        let e = mismatch(&local, &Deployed::parse(&pem, &m2)).unwrap();
        assert!(e.contains("another b than"), "{e}");
        assert!(!e.contains("= z"), "{e}");
        // A secret that a newer pgdeploy added locally is no mismatch.
        let m3 = marker("c", &pem, &json!({"a": "x"}));
        assert_eq!(mismatch(&local, &Deployed::parse(&pem, &m3)), None);
    }

    #[test]
    fn export_then_import_elsewhere() {
        let a = tempfile::tempdir().unwrap();
        let sa = a.path().join(".pgdeploy/c1");
        let pem = state(&sa);
        let file = a.path().join("c1.state");
        let (n, fp) = export(&sa, "c1", &file).unwrap();
        assert!(n >= 3, "{n}");
        assert_eq!(Some(fp.clone()), cert_fingerprint(&pem));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Never overwritten.
        assert!(matches!(
            export(&sa, "c1", &file),
            Err(StateError::Exists(_))
        ));
        // Another workstation with no state.
        let b = tempfile::tempdir().unwrap();
        let sb = b.path().join(".pgdeploy/c1");
        let r = import(&sb, "c1", &file, false).unwrap();
        assert_eq!(r.ca, fp);
        assert_eq!(
            fs::read(sb.join("secrets.json")).unwrap(),
            fs::read(sa.join("secrets.json")).unwrap()
        );
        assert_eq!(
            fs::metadata(sb.join("tls/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // Again: the same state, nothing to do.
        assert_eq!(import(&sb, "c1", &file, false).unwrap().files, 0);
        // A workstation whose check generated a fresh state: refused, then replaced.
        let c = tempfile::tempdir().unwrap();
        let sc = c.path().join(".pgdeploy/c1");
        state(&sc);
        assert!(matches!(
            import(&sc, "c1", &file, false),
            Err(StateError::Differs { .. })
        ));
        let r = import(&sc, "c1", &file, true).unwrap();
        assert!(r.kept_aside.as_ref().unwrap().join("tls/ca.crt").exists());
        assert_eq!(
            cert_fingerprint(&fs::read_to_string(sc.join("tls/ca.crt")).unwrap()),
            Some(fp)
        );
        // Another cluster's file.
        assert!(matches!(
            import(&sc, "c2", &file, false),
            Err(StateError::OtherCluster { .. })
        ));
    }
}
