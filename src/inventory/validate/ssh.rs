//! `ssh`: login user, timeouts, jump host, key and secret settings.

use super::address::{check_address, split_host_port};
use super::{is_env_var_name, Checker};
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

/// A parsed `ssh.jump_host`: `[user@]host[:port]` (IPv6 as `[addr]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

/// Parse `[user@]host[:port]`; the port defaults to 22.
pub fn parse_jump_host(s: &str) -> Result<JumpHost, String> {
    let s = s.trim();
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => {
            if !is_valid_user_name(u) {
                return Err(format!("`{u}` is not a valid user name"));
            }
            (Some(u.to_string()), r)
        }
        None => (None, s),
    };
    let (host, port) = split_host_port(rest, 22)?;
    check_address(&host)?;
    Ok(JumpHost { user, host, port })
}

/// A POSIX-style user name: `[a-z_][a-z0-9_-]*[$]?`, up to 32 characters.
pub fn is_valid_user_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut chars = body.chars();
    s.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.'
        })
}

impl Checker<'_> {
    pub(super) fn ssh(&mut self, inv: &Inventory) {
        let s = &inv.ssh;
        let path = |k: &'static str| [Seg::Key("ssh"), Seg::Key(k)];
        if !is_valid_user_name(&s.user) {
            self.push(
                Problem::new(format!("`ssh.user` `{}` is not a valid user name", s.user))
                    .label(self.exact(&path("user")), "invalid user name")
                    .help("give the login name on the hosts, e.g. `root` or `deploy`"),
            );
        }
        if s.connect_timeout == 0 {
            self.push(
                Problem::new("`ssh.connect_timeout` is 0: no connection could ever succeed")
                    .label(self.exact(&path("connect_timeout")), "must be at least 1")
                    .help("give the seconds to wait for a host to answer, e.g. 10"),
            );
        }
        if s.persist > 3600 {
            self.push(
                Problem::new(format!(
                    "`ssh.persist` is {} s: an idle connection to every host would stay open for over an hour",
                    s.persist
                ))
                .label(self.exact(&path("persist")), "at most 3600")
                .help("give the seconds to keep a connection for the next command (default 60), or 0 to connect anew every time"),
            );
        }
        if let Some(j) = &s.jump_host {
            self.jump_host(j, &path("jump_host"));
        }
        for (key, value) in [
            ("passphrase_env", &s.passphrase_env),
            ("sudo_password_env", &s.sudo_password_env),
        ] {
            if let Some(v) = value {
                if !is_env_var_name(v) {
                    self.push(
                        Problem::new(format!(
                            "`ssh.{key}` must name an environment variable, not `{v}`"
                        ))
                        .label(self.exact(&path(key)), "not a variable name")
                        .help("give the variable's name (letters, digits, `_`), e.g. PGDEPLOY_SUDO_PASSWORD; never the secret itself"),
                    );
                }
            }
        }
        for (key, value) in [
            ("private_key", &s.private_key),
            ("known_hosts", &s.known_hosts),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                self.push(
                    Problem::new(format!("`ssh.{key}` is empty"))
                        .label(self.exact(&path(key)), "empty path")
                        .help(format!(
                            "give a file path or remove `{key}` to use the default"
                        )),
                );
            }
        }
    }

    pub(super) fn jump_host(&mut self, j: &str, path: &[Seg<'_>]) {
        if let Err(why) = parse_jump_host(j) {
            self.push(
                Problem::new(format!("jump host `{j}` is not valid: {why}"))
                    .label(self.exact(path), "expected [user@]host[:port]")
                    .help("write it as `[user@]host[:port]`, e.g. `admin@bastion.example.com:2222` (IPv6: `[fd00::1]:22`)"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hosts() {
        assert_eq!(
            parse_jump_host("admin@bastion.example.com:2222"),
            Ok(JumpHost {
                user: Some("admin".into()),
                host: "bastion.example.com".into(),
                port: 2222
            })
        );
        assert_eq!(
            parse_jump_host("10.0.0.5"),
            Ok(JumpHost {
                user: None,
                host: "10.0.0.5".into(),
                port: 22
            })
        );
        assert_eq!(
            parse_jump_host("root@[fd00::5]:22"),
            Ok(JumpHost {
                user: Some("root".into()),
                host: "fd00::5".into(),
                port: 22
            })
        );
        assert_eq!(parse_jump_host("fd00::5").map(|j| j.port), Ok(22));
        for bad in [
            "",
            "@host",
            "user@",
            "host:0",
            "host:70000",
            "host:ssh",
            "Bad User@h",
            "[fd00::5",
            "a b",
        ] {
            assert!(parse_jump_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert!(is_valid_user_name("root"));
        assert!(is_valid_user_name("deploy-1"));
        assert!(!is_valid_user_name("Root"));
        assert!(!is_valid_user_name(""));
    }
}
