//! known_hosts verification (OpenSSH format): plain and hashed (`|1|salt|hash`) host patterns,
//! `*`/`?` wildcards, `!` negation, `@revoked` markers. `@cert-authority` lines are ignored.
//!
//! Lines are parsed by `ssh-key` (markers, hashed names, keys). It has no host matching and no
//! writer, so matching a host against an entry's patterns and appending new keys live here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
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
    // Line by line rather than through `KnownHosts`: messages name the line, and one bad line
    // is skipped (as OpenSSH does) instead of failing the whole file.
    for (i, raw) in text.lines().enumerate() {
        let Some(entry) = parse_line(raw) else {
            continue;
        };
        let revoked = match entry.marker() {
            None => false,
            Some(Marker::Revoked) => true,
            // @cert-authority: host certificates are not used.
            Some(_) => continue,
        };
        if hosts_match(entry.host_patterns(), pattern_host) {
            out.push(Known {
                line: i + 1,
                key: entry.public_key().clone(),
                revoked,
            });
        }
    }
    Ok(out)
}

/// One known_hosts line; None for blank lines, comments and lines that do not parse.
fn parse_line(raw: &str) -> Option<Entry> {
    // ssh-key splits fields on single spaces; OpenSSH takes any run of blanks (and leading
    // ones), so the fields are rejoined with one space first.
    let fields: Vec<&str> = raw.split_whitespace().collect();
    if fields.first().is_none_or(|f| f.starts_with('#')) {
        return None;
    }
    fields.join(" ").parse().ok()
}

/// Whether `host` (a [`host_pattern`]) matches an entry's host patterns: any positive pattern
/// matches and no negated one does, or the hashed name is the host's.
fn hosts_match(patterns: &HostPatterns, host: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => hashed_match(salt, hash, host),
        HostPatterns::Patterns(pats) => {
            let mut matched = false;
            for pat in pats {
                if let Some(neg) = pat.strip_prefix('!') {
                    if glob(neg, host) {
                        return false;
                    }
                } else if glob(pat, host) {
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `ssh-keygen -H` names: HMAC-SHA1 of the host, keyed with the salt.
fn hashed_match(salt: &[u8], hash: &[u8], host: &str) -> bool {
    let Ok(mut mac) = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt) else {
        return false;
    };
    mac.update(host.as_bytes());
    mac.verify_slice(hash).is_ok()
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
    if let Some(k) = known.iter().find(|k| !k.revoked) {
        // Known by a key of another type that the host no longer offers: OpenSSH refuses to
        // add the new one even with accept-new, and so does pgdeploy.
        return Err(SshError::new(
            c.label,
            format!(
                "{pattern} is known in {shown} line {} by its {} key, but now presents a {} key {fp} \
                 instead; refusing to connect (someone may be intercepting the connection)",
                k.line,
                k.key.algorithm(),
                key.algorithm()
            ),
            Some(format!(
                "check the new key out of band (on the host: `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub`); \
                 if the host really changed its keys, remove line {} from {shown} \
                 (`ssh-keygen -R '{pattern}' -f {shown}`) and run again with --accept-new-host-keys",
                key_file_kind(&key.algorithm()),
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
    use base64::Engine;
    use russh::keys::ssh_key::public::Ed25519PublicKey;

    fn pats(s: &str) -> HostPatterns {
        s.parse().unwrap()
    }

    /// A distinct (not necessarily valid-on-the-curve) Ed25519 public key.
    fn key(n: u8) -> PublicKey {
        PublicKey::from(Ed25519PublicKey([n; 32]))
    }

    fn openssh(k: &PublicKey) -> String {
        k.to_openssh().unwrap()
    }

    /// `ssh-keygen -H` form of `host`.
    fn hashed_name(host: &str) -> String {
        let salt = b"0123456789abcdefghij";
        let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(salt).unwrap();
        mac.update(host.as_bytes());
        let h = mac.finalize().into_bytes();
        let e = base64::engine::general_purpose::STANDARD;
        format!("|1|{}|{}", e.encode(salt), e.encode(h))
    }

    #[test]
    fn globs() {
        assert!(glob("*.example.com", "a.example.com"));
        assert!(glob("[10.0.0.?]:2222", "[10.0.0.5]:2222"));
        assert!(!glob("*.example.com", "example.org"));
        assert!(hosts_match(&pats("a,b,[c]:2"), "[c]:2"));
        assert!(!hosts_match(&pats("*,!bad"), "bad"));
        assert!(hosts_match(&pats("*,!bad"), "good"));
    }

    #[test]
    fn hashed() {
        let pat = pats(&hashed_name("localhost"));
        assert!(matches!(pat, HostPatterns::HashedName { .. }));
        assert!(hosts_match(&pat, "localhost"));
        assert!(!hosts_match(&pat, "otherhost"));
        let pat = pats(&hashed_name("[10.0.0.5]:2222"));
        assert!(hosts_match(&pat, "[10.0.0.5]:2222"));
        assert!(!hosts_match(&pat, "10.0.0.5"));
    }

    #[test]
    fn lookup_reads_markers_hashed_names_and_skips_junk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("known_hosts");
        let text = format!(
            "# comment\n\
             \n\
             pg1,pg2 {k1}\n\
             @revoked pg1 {k2}\n\
             @cert-authority *.example.com,pg1 {k3}\n\
             {hashed} {k4} a comment\n\
             \tpg1\t  {k5}\n\
             pg1 ssh-ed25519 not-base64\n\
             @unknown-marker pg1 {k6}\n\
             pg1\n",
            k1 = openssh(&key(1)),
            k2 = openssh(&key(2)),
            k3 = openssh(&key(3)),
            k4 = openssh(&key(4)),
            k5 = openssh(&key(5)),
            k6 = openssh(&key(6)),
            hashed = hashed_name("[pg1]:2222"),
        );
        std::fs::write(&p, text).unwrap();

        let found = lookup(&p, "pg1").unwrap();
        let got: Vec<(usize, bool)> = found.iter().map(|k| (k.line, k.revoked)).collect();
        assert_eq!(got, [(3, false), (4, true), (7, false)]);
        assert_eq!(found[0].key.key_data(), key(1).key_data());
        assert_eq!(found[1].key.key_data(), key(2).key_data());
        assert_eq!(found[2].key.key_data(), key(5).key_data());

        let found = lookup(&p, "[pg1]:2222").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 6);
        assert_eq!(found[0].key.key_data(), key(4).key_data());

        assert!(lookup(&p, "pg3").unwrap().is_empty());
        assert!(lookup(&d.path().join("missing"), "pg1").unwrap().is_empty());
    }

    #[test]
    fn verify_refuses_revoked_changed_and_unknown_then_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub").join("known_hosts");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            &p,
            format!(
                "[h]:2222 {}\n@revoked [h]:2222 {}",
                openssh(&key(1)),
                openssh(&key(2))
            ),
        )
        .unwrap();
        let check = |port, accept_new| Check {
            label: "h",
            addr: "h",
            port,
            path: &p,
            accept_new,
        };
        let msg = |r: Result<(), SshError>| r.unwrap_err().to_string();

        verify(&check(2222, false), &key(1)).unwrap();
        let m = msg(verify(&check(2222, true), &key(2)));
        assert!(m.contains("@revoked") && m.contains("line 2"), "{m}");
        let m = msg(verify(&check(2222, true), &key(3)));
        assert!(
            m.contains("HOST KEY CHANGED") && m.contains("line 1"),
            "{m}"
        );
        let m = msg(verify(&check(22, false), &key(3)));
        assert!(m.contains("unknown host key for h"), "{m}");

        verify(&check(22, true), &key(3)).unwrap();
        verify(&check(22, true), &key(3)).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.ends_with(&format!("\nh {}\n", openssh(&key(3)))),
            "{text}"
        );
        assert_eq!(text.matches(&openssh(&key(3))).count(), 1, "{text}");
        verify(&check(22, false), &key(3)).unwrap();
    }

    #[test]
    fn a_known_host_offering_another_key_type_is_refused_even_with_accept_new() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("known_hosts");
        std::fs::write(&p, format!("[h]:2222 {}\n", openssh(&key(1)))).unwrap();
        let rsa = PublicKey::from_openssh(
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC2bluB/RB7kBCavrbhjv1VY/hSum8cYCzTdM3Y+KHqSPZdtr4ednnDql3uL7pam8fSUA1nIBp9/T9yxR6q+W87+EnPQzdvJyQjHU50uDaregevRAnw3xWtlunrNFwWyWloi0eVBMC5WAYFi6wTDHsour28lugp41Zug49pSmk5CQ==",
        )
        .unwrap();
        let check = Check {
            label: "h",
            addr: "h",
            port: 2222,
            path: &p,
            accept_new: true,
        };
        let m = verify(&check, &rsa).unwrap_err().to_string();
        assert!(
            m.contains("known in") && m.contains("line 1") && m.contains("ssh-rsa"),
            "{m}"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1, "nothing recorded: {text}");
    }
}
