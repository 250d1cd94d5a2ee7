//! known_hosts verification (OpenSSH format): plain and hashed (`|1|salt|hash`) host patterns,
//! `*`/`?` wildcards, `!` negation, `@revoked` markers. `@cert-authority` lines are ignored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use hmac::{KeyInit, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};

use super::SshError;

/// How a host is written in known_hosts: `addr` for port 22, `[addr]:port` otherwise.
pub fn host_pattern(addr: &str, port: u16) -> String {
    if port == 22 {
        addr.to_string()
    } else {
        format!("[{addr}]:{port}")
    }
}

/// A key recorded for a host.
pub struct Known {
    pub line: usize,
    pub key: PublicKey,
    pub revoked: bool,
}

/// Keys recorded for `pattern_host` (see [`host_pattern`]) in `path`. A missing file is empty.
pub fn lookup(path: &Path, pattern_host: &str) -> std::io::Result<Vec<Known>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                _ => continue, // @cert-authority: host certificates are not used
            }
            first = match fields.next() {
                Some(f) => f,
                None => continue,
            };
        }
        let (Some(_alg), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, pattern_host) {
            continue;
        }
        // A line we cannot parse is skipped, as OpenSSH does.
        if let Ok(key) = russh::keys::parse_public_key_base64(b64) {
            out.push(Known {
                line: i + 1,
                key,
                revoked,
            });
        }
    }
    Ok(out)
}

fn hosts_match(field: &str, host: &str) -> bool {
    let mut matched = false;
    for pat in field.split(',') {
        if let Some(neg) = pat.strip_prefix('!') {
            if glob(neg, host) {
                return false;
            }
        } else if pat.starts_with("|1|") {
            if hashed_match(pat, host) {
                matched = true;
            }
        } else if glob(pat, host) {
            matched = true;
        }
    }
    matched
}

fn hashed_match(pat: &str, host: &str) -> bool {
    let mut parts = pat.split('|').skip(2);
    let b64 = base64::engine::general_purpose::STANDARD;
    let (Some(Ok(salt)), Some(Ok(hash))) = (
        parts.next().map(|s| b64.decode(s)),
        parts.next().map(|s| b64.decode(s)),
    ) else {
        return false;
    };
    let Ok(mut mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(host.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Case-insensitive `*`/`?` glob, as in OpenSSH host patterns.
fn glob(pat: &str, s: &str) -> bool {
    let p: Vec<char> = pat.to_ascii_lowercase().chars().collect();
    let s: Vec<char> = s.to_ascii_lowercase().chars().collect();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    a == b || (matches!(a, Algorithm::Rsa { .. }) && matches!(b, Algorithm::Rsa { .. }))
}

/// Host-key algorithms in russh's preference order, with the ones recorded for this host first
/// (as OpenSSH does), so a host known by its RSA key is not reported as unknown because it
/// also has an Ed25519 key.
pub fn preferred_for(known: &[Known], default: &[Algorithm]) -> Vec<Algorithm> {
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) =
        default.iter().cloned().partition(|a| {
            known
                .iter()
                .any(|k| !k.revoked && same_family(&k.key.algorithm(), a))
        });
    first.extend(rest);
    first
}

pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

static APPEND_LOCK: Mutex<()> = Mutex::new(());

/// What to do with a server key.
pub struct Check<'a> {
    /// For messages: "pg1" or "jump host bastion (for pg1)".
    pub label: &'a str,
    pub addr: &'a str,
    pub port: u16,
    pub path: &'a Path,
    pub accept_new: bool,
}

/// Verify `key` against the known_hosts file; record it when unknown and `accept_new`.
pub fn verify(c: &Check<'_>, key: &PublicKey) -> Result<(), SshError> {
    let pattern = host_pattern(c.addr, c.port);
    let shown = c.path.display();
    let known = lookup(c.path, &pattern).map_err(|e| {
        SshError::new(
            c.label,
            format!("cannot read known_hosts file {shown}: {e}"),
            Some("fix the file's permissions or point ssh.known_hosts at a readable file".into()),
        )
    })?;
    let fp = fingerprint(key);
    if let Some(k) = known
        .iter()
        .find(|k| k.revoked && k.key.key_data() == key.key_data())
    {
        return Err(SshError::new(
            c.label,
            format!(
                "host key {fp} of {pattern} is marked @revoked in {shown} line {}; refusing to connect",
                k.line
            ),
            Some("the host must get a new host key; do not connect until it does".into()),
        ));
    }
    if known
        .iter()
        .any(|k| !k.revoked && k.key.key_data() == key.key_data())
    {
        return Ok(());
    }
    if let Some(k) = known
        .iter()
        .find(|k| !k.revoked && same_family(&k.key.algorithm(), &key.algorithm()))
    {
        return Err(SshError::new(
            c.label,
            format!(
                "HOST KEY CHANGED for {pattern}: the host now presents {} key {fp}, but {shown} line {} \
                 records a different one. Someone may be intercepting the connection (or the host was \
                 reinstalled); refusing to connect",
                key.algorithm(),
                k.line
            ),
            Some(format!(
                "if the change is expected, remove line {} from {shown} (e.g. `ssh-keygen -R '{pattern}' -f {shown}`) \
                 and run again with --accept-new-host-keys",
                k.line
            )),
        ));
    }
    if !c.accept_new {
        return Err(SshError::new(
            c.label,
            format!(
                "unknown host key for {pattern}: {} {fp} is not in {shown}; refusing to connect",
                key.algorithm()
            ),
            Some(format!(
                "check the fingerprint out of band (on the host: `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub`), \
                 then run again with --accept-new-host-keys to record it (like OpenSSH's \
                 StrictHostKeyChecking=accept-new), or add it to {shown} yourself",
                key_file_kind(&key.algorithm())
            )),
        ));
    }
    append(c.path, &pattern, key).map_err(|e| {
        SshError::new(
            c.label,
            format!("cannot record the host key of {pattern} in {shown}: {e}"),
            Some("make the known_hosts file (and its directory) writable".into()),
        )
    })
}

fn key_file_kind(a: &Algorithm) -> &'static str {
    match a {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::Ecdsa { .. } => "ecdsa",
        Algorithm::Rsa { .. } => "rsa",
        _ => "*",
    }
}

fn append(path: &Path, pattern: &str, key: &PublicKey) -> std::io::Result<()> {
    let _guard = APPEND_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    // Another task may have recorded it meanwhile.
    if lookup(path, pattern)?
        .iter()
        .any(|k| k.key.key_data() == key.key_data())
    {
        return Ok(());
    }
    let existing = std::fs::read(path).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let openssh = key
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut parts = openssh.split_whitespace();
    let (alg, b64) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let mut line = String::new();
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        line.push('\n');
    }
    line.push_str(&format!("{pattern} {alg} {b64}\n"));
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// Default known_hosts: ~/.ssh/known_hosts.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh").join("known_hosts"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*.example.com", "a.example.com"));
        assert!(glob("[10.0.0.?]:2222", "[10.0.0.5]:2222"));
        assert!(!glob("*.example.com", "example.org"));
        assert!(hosts_match("a,b,[c]:2", "[c]:2"));
        assert!(!hosts_match("*,!bad", "bad"));
    }

    #[test]
    fn hashed() {
        // `ssh-keygen -H` form of "localhost" (salt/hash computed with HMAC-SHA1).
        let salt = b"0123456789abcdefghij";
        let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt).unwrap();
        mac.update(b"localhost");
        let h = mac.finalize().into_bytes();
        let e = base64::engine::general_purpose::STANDARD;
        let pat = format!("|1|{}|{}", e.encode(salt), e.encode(h));
        assert!(hosts_match(&pat, "localhost"));
        assert!(!hosts_match(&pat, "otherhost"));
    }
}
