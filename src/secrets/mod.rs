//! Generated cluster secrets (PostgreSQL superuser/replication passwords, Patroni REST
//! password), persisted in `<state dir>/secrets.json` (mode 0600) so re-runs reuse them.
//!
//! A [`Secret`] never prints its value through `Debug` or `Display`; use [`Secret::expose`]
//! where the value is really needed (templates, SQL). [`redact`] removes every secret value
//! from a text (diffs, command output) before it is shown.

use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of generated passwords (ASCII letters and digits only: safe in YAML, URLs, pgpass,
/// and shell single quotes without escaping).
pub const PASSWORD_LEN: usize = 32;

/// File name inside the cluster state directory.
pub const SECRETS_FILE: &str = "secrets.json";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SecretsError {
    #[error("cannot create the state directory {path}: {source}")]
    #[diagnostic(help("check that the inventory directory is writable by this user"))]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    #[diagnostic(help("check the file's permissions; it must be readable by this user"))]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid secrets file: {source}")]
    #[diagnostic(help(
        "the file was edited or truncated; restore it from a backup. Deleting it generates new \
         passwords, which then no longer match the ones already deployed on the hosts"
    ))]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    #[diagnostic(help("check free space and permissions of the state directory"))]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the secret `{field}` is empty")]
    #[diagnostic(help("remove the field from the file to have a new value generated"))]
    Empty { path: PathBuf, field: &'static str },
}

/// A secret string. `Debug` and `Display` print `<redacted>`; serde writes the real value
/// (it is persisted and rendered into templates).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// A new random alphanumeric secret of [`PASSWORD_LEN`] characters.
    pub fn generate() -> Self {
        let s: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(PASSWORD_LEN)
            .map(char::from)
            .collect();
        Secret(s)
    }

    /// The real value. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The cluster's generated secrets. Serializes (for templates: `secrets.superuser_password`
/// etc.) with the real values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Secrets {
    /// Password of the `postgres` superuser.
    pub superuser_password: Secret,
    /// Password of the `replicator` replication user.
    pub replication_password: Secret,
    /// Password of the Patroni REST API user (`patroni`) for unsafe endpoints.
    pub rest_password: Secret,
    /// Password of Patroni's etcd user (`patroni-<cluster>`, read and write on the cluster's
    /// prefix only): etcd's JSON gateway, which Patroni uses, knows no certificate identity.
    pub etcd_password: Secret,
    /// Password of `pgdeploy_check`, the least-privilege role pgdeploy's own checks (verify)
    /// log in as through HAProxy: it may log in and nothing more.
    pub check_password: Secret,
}

/// On-disk form: fields may be missing (older files, or a user removed one to rotate it).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    #[serde(default)]
    superuser_password: Option<Secret>,
    #[serde(default)]
    replication_password: Option<Secret>,
    #[serde(default)]
    rest_password: Option<Secret>,
    #[serde(default)]
    etcd_password: Option<Secret>,
    #[serde(default)]
    check_password: Option<Secret>,
}

impl Secrets {
    /// Load `<state_dir>/secrets.json`, generating (and persisting) any missing secret.
    /// The directory is created with mode 0700 and the file is written with mode 0600.
    /// An existing complete file is left untouched (its mode is tightened to 0600 if needed).
    pub fn load_or_create(state_dir: &Path) -> Result<Secrets, SecretsError> {
        ensure_private_dir(state_dir).map_err(|source| SecretsError::CreateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(SECRETS_FILE);
        let existing = match fs::read_to_string(&path) {
            Ok(text) => Some(
                serde_json::from_str::<SecretsFile>(&text).map_err(|source| {
                    SecretsError::Parse {
                        path: path.clone(),
                        source,
                    }
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SecretsError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let found = existing.is_some();
        let f = existing.unwrap_or_default();
        let mut changed = !found;
        let mut take = |v: Option<Secret>, field: &'static str| -> Result<Secret, SecretsError> {
            match v {
                Some(s) if s.expose().is_empty() => Err(SecretsError::Empty {
                    path: path.clone(),
                    field,
                }),
                Some(s) => Ok(s),
                None => {
                    changed = true;
                    Ok(Secret::generate())
                }
            }
        };
        let secrets = Secrets {
            superuser_password: take(f.superuser_password, "superuser_password")?,
            replication_password: take(f.replication_password, "replication_password")?,
            rest_password: take(f.rest_password, "rest_password")?,
            etcd_password: take(f.etcd_password, "etcd_password")?,
            check_password: take(f.check_password, "check_password")?,
        };
        if changed {
            let mut text =
                serde_json::to_string_pretty(&secrets).map_err(|source| SecretsError::Parse {
                    path: path.clone(),
                    source,
                })?;
            text.push('\n');
            write_private(&path, text.as_bytes()).map_err(|source| SecretsError::Write {
                path: path.clone(),
                source,
            })?;
        } else {
            tighten_mode(&path).map_err(|source| SecretsError::Write {
                path: path.clone(),
                source,
            })?;
        }
        Ok(secrets)
    }

    /// Every secret value (for redaction).
    pub fn values(&self) -> [&Secret; 5] {
        [
            &self.superuser_password,
            &self.replication_password,
            &self.rest_password,
            &self.etcd_password,
            &self.check_password,
        ]
    }
}

/// Replace every occurrence of any secret value in `text` by `<redacted>`.
pub fn redact(text: &str, secrets: &Secrets) -> String {
    redact_values(text, secrets.values())
}

/// Replace every occurrence of the given secret values (longest first) by `<redacted>`.
pub fn redact_values<'a>(text: &str, values: impl IntoIterator<Item = &'a Secret>) -> String {
    let mut vals: Vec<&str> = values
        .into_iter()
        .map(|s| s.expose())
        .filter(|v| !v.is_empty())
        .collect();
    // Longest first, so a secret that contains another is replaced whole.
    vals.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in vals {
        if out.contains(v) {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

/// Create `dir` (and parents) if missing; a directory created here gets mode 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

use std::os::unix::fs::DirBuilderExt;

/// Write `data` to `path` atomically (temp file in the same directory, fsync, rename), mode 0600.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Make sure an existing file is not readable by group/others.
pub(crate) fn tighten_mode(path: &Path) -> std::io::Result<()> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_alnum_and_distinct() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.expose().len(), PASSWORD_LEN);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("hunter2hunter2");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        let dir = tempfile::tempdir().unwrap();
        let all = Secrets::load_or_create(dir.path()).unwrap();
        let dbg = format!("{all:?}");
        for v in all.values() {
            assert!(!dbg.contains(v.expose()));
        }
    }

    #[test]
    fn persisted_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".pgdeploy").join("c1");
        let a = Secrets::load_or_create(&state).unwrap();
        let path = state.join(SECRETS_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        let before = fs::read(&path).unwrap();
        let b = Secrets::load_or_create(&state).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            before,
            fs::read(&path).unwrap(),
            "unchanged file is not rewritten"
        );
    }

    #[test]
    fn missing_field_is_generated_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRETS_FILE);
        fs::write(
            &path,
            r#"{"superuser_password":"abc","replication_password":"def"}"#,
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(s.superuser_password.expose(), "abc");
        assert_eq!(s.replication_password.expose(), "def");
        assert_eq!(s.rest_password.expose().len(), PASSWORD_LEN);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Secrets::load_or_create(dir.path()).unwrap();
        assert_eq!(s, again);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SECRETS_FILE);
        fs::write(&path, "{not json").unwrap();
        let err = Secrets::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, SecretsError::Parse { .. }));
        assert!(err.to_string().contains(SECRETS_FILE));
        // The file is left as it was.
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
    }

    #[test]
    fn redact_replaces_every_secret() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::load_or_create(dir.path()).unwrap();
        let text = format!(
            "password: {}\nreplication: {} and again {}\nrest: {}\n",
            s.superuser_password.expose(),
            s.replication_password.expose(),
            s.replication_password.expose(),
            s.rest_password.expose()
        );
        let r = redact(&text, &s);
        for v in s.values() {
            assert!(!r.contains(v.expose()));
        }
        assert_eq!(r.matches("<redacted>").count(), 4);
        assert!(r.starts_with("password: <redacted>\n"));
    }

    #[test]
    fn redact_longest_first() {
        let a = Secret::new("abc");
        let b = Secret::new("abcdef");
        assert_eq!(
            redact_values("x abcdef y abc", [&a, &b]),
            "x <redacted> y <redacted>"
        );
    }
}
