//! `users` and `databases`: the applications' roles and databases.

use std::collections::{BTreeMap, BTreeSet};

use super::{is_env_var_name, Checker};
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::{Inventory, Presence};

/// Roles pgdeploy itself owns or PostgreSQL reserves: no inventory may declare them.
pub const RESERVED_ROLES: &[&str] = &[
    "postgres",
    "replicator",
    "public",
    "none",
    "all",
    "current_user",
    "current_role",
    "session_user",
];
/// Databases PostgreSQL and Patroni need as they are.
pub const RESERVED_DATABASES: &[&str] = &["postgres", "template0", "template1"];

/// A name pgdeploy writes into SQL unquoted: `[a-z_][a-z0-9_]*`, at most 63 bytes (PostgreSQL
/// would fold or truncate anything else).
pub fn is_valid_sql_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= 63
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Why a role name cannot be declared, if it cannot.
pub fn reserved_role(name: &str) -> Option<&'static str> {
    if RESERVED_ROLES.contains(&name) {
        Some("it is PostgreSQL's or pgdeploy's own")
    } else if name.starts_with("pg_") {
        Some("PostgreSQL reserves names that start with `pg_`")
    } else if name.starts_with("pgdeploy") {
        Some("pgdeploy reserves names that start with `pgdeploy` for its own roles")
    } else {
        None
    }
}

const ENCODINGS: &[&str] = &["UTF8", "SQL_ASCII", "LATIN1", "LATIN9", "WIN1252"];

impl Checker<'_> {
    pub(super) fn catalog(&mut self, inv: &Inventory) {
        let mut roles: BTreeMap<&str, Presence> = BTreeMap::new();
        for (i, u) in inv.users.iter().enumerate() {
            let at = |k: &'static str| vec![Seg::Key("users"), Seg::Index(i), Seg::Key(k)];
            let name = u.name.as_str();
            if !is_valid_sql_name(name) {
                self.push(
                    Problem::new(format!("role name `{name}` is not valid"))
                        .label(self.exact(&at("name")), "invalid role name")
                        .help("use lowercase letters, digits and `_`, starting with a letter or `_` (at most 63)"),
                );
            } else if let Some(why) = reserved_role(name) {
                self.push(
                    Problem::new(format!("role `{name}` cannot be declared: {why}"))
                        .label(self.exact(&at("name")), "reserved")
                        .help("give the application's role a name of its own, e.g. `app`"),
                );
            }
            if let Some(prev) = roles.insert(name, u.state) {
                let msg = if prev != u.state {
                    format!("role `{name}` is both declared and marked absent")
                } else {
                    format!("role `{name}` is declared twice")
                };
                self.push(
                    Problem::new(msg)
                        .label(self.exact(&at("name")), "again here")
                        .help("keep one entry per role"),
                );
            }
            if u.password_file.is_some() && u.password_env.is_some() {
                self.push(
                    Problem::new(format!(
                        "role `{name}` has both password_file and password_env"
                    ))
                    .label(self.key(&at("password_env")), "one source only")
                    .help("keep one of them"),
                );
            }
            if u.state == Presence::Present
                && u.login
                && u.password_file.is_none()
                && u.password_env.is_none()
            {
                self.push(
                    Problem::new(format!("login role `{name}` has no password"))
                        .label(self.near(&at("name")), "no password_file or password_env")
                        .help("add `password_file: FILE` (mode 0600) or `password_env: VAR`; the password is never written in the inventory"),
                );
            }
            if let Some(v) = &u.password_env {
                if !is_env_var_name(v) {
                    self.push(
                        Problem::new(format!(
                            "password_env `{v}` is not an environment variable name"
                        ))
                        .label(self.exact(&at("password_env")), "invalid")
                        .help("use letters, digits and `_`, not starting with a digit"),
                    );
                }
            }
            if u.connection_limit < -1 {
                self.push(
                    Problem::new(format!(
                        "role `{name}`: connection_limit {} is not valid",
                        u.connection_limit
                    ))
                    .label(self.exact(&at("connection_limit")), "invalid")
                    .help("give a number of connections, or -1 for no limit"),
                );
            }
        }
        let present = |r: &str| roles.get(r) == Some(&Presence::Present);
        for (i, u) in inv.users.iter().enumerate() {
            for (j, m) in u.member_of.iter().enumerate() {
                let ok = present(m)
                    || matches!(
                        m.as_str(),
                        "pg_read_all_data"
                            | "pg_write_all_data"
                            | "pg_monitor"
                            | "pg_read_all_stats"
                            | "pg_read_all_settings"
                            | "pg_stat_scan_tables"
                            | "pg_signal_backend"
                    );
                if !ok && u.state == Presence::Present {
                    self.push(
                        Problem::new(format!(
                            "role `{}` is a member of `{m}`, which is not a declared role",
                            u.name
                        ))
                        .label(
                            self.exact(&[
                                Seg::Key("users"),
                                Seg::Index(i),
                                Seg::Key("member_of"),
                                Seg::Index(j),
                            ]),
                            "not declared",
                        )
                        .help("declare it under `users:` (e.g. with `login: false`), or use a predefined role such as pg_read_all_data"),
                    );
                }
            }
        }

        let mut dbs: BTreeSet<&str> = BTreeSet::new();
        for (i, d) in inv.databases.iter().enumerate() {
            let at = |k: &'static str| vec![Seg::Key("databases"), Seg::Index(i), Seg::Key(k)];
            let name = d.name.as_str();
            if !is_valid_sql_name(name) {
                self.push(
                    Problem::new(format!("database name `{name}` is not valid"))
                        .label(self.exact(&at("name")), "invalid database name")
                        .help("use lowercase letters, digits and `_`, starting with a letter or `_` (at most 63)"),
                );
            } else if RESERVED_DATABASES.contains(&name) {
                self.push(
                    Problem::new(format!("database `{name}` cannot be declared: PostgreSQL and Patroni need it as it is"))
                        .label(self.exact(&at("name")), "reserved")
                        .help("give the application's database a name of its own, e.g. `app`"),
                );
            }
            if !dbs.insert(name) {
                self.push(
                    Problem::new(format!("database `{name}` is declared twice"))
                        .label(self.exact(&at("name")), "again here")
                        .help("keep one entry per database"),
                );
            }
            if d.drop_data && d.state != Presence::Absent {
                self.push(
                    Problem::new(format!(
                        "database `{name}`: drop_data without `state: absent`"
                    ))
                    .label(self.key(&at("drop_data")), "drops nothing")
                    .help(
                        "drop_data confirms dropping a database marked `state: absent`; remove it",
                    ),
                );
            }
            if d.state == Presence::Absent {
                continue;
            }
            match &d.owner {
                Some(o) if !present(o) => self.push(
                    Problem::new(format!(
                        "database `{name}`: owner `{o}` is not a declared role"
                    ))
                    .label(self.exact(&at("owner")), "not declared")
                    .help("declare the owner under `users:`"),
                ),
                _ => {}
            }
            if !ENCODINGS.contains(&d.encoding.as_str()) {
                self.push(
                    Problem::new(format!(
                        "database `{name}`: encoding `{}` is not supported",
                        d.encoding
                    ))
                    .label(self.exact(&at("encoding")), "unknown encoding")
                    .help(format!("use one of {}", ENCODINGS.join(", "))),
                );
            }
            let locale_ok = !d.locale.is_empty()
                && d.locale
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
            if !locale_ok {
                self.push(
                    Problem::new(format!(
                        "database `{name}`: locale `{}` is not valid",
                        d.locale
                    ))
                    .label(self.exact(&at("locale")), "invalid locale")
                    .help("give a locale the hosts have, such as C.UTF-8"),
                );
            }
            for (j, e) in d.extensions.iter().enumerate() {
                if !is_valid_sql_name(e) {
                    self.push(
                        Problem::new(format!(
                            "database `{name}`: extension `{e}` is not a valid name"
                        ))
                        .label(
                            self.exact(&[
                                Seg::Key("databases"),
                                Seg::Index(i),
                                Seg::Key("extensions"),
                                Seg::Index(j),
                            ]),
                            "invalid",
                        )
                        .help("name an extension the release ships, e.g. pg_trgm or citext"),
                    );
                }
            }
            for (j, r) in d.readers.iter().enumerate() {
                if !present(r) {
                    self.push(
                        Problem::new(format!(
                            "database `{name}`: reader `{r}` is not a declared role"
                        ))
                        .label(
                            self.exact(&[
                                Seg::Key("databases"),
                                Seg::Index(i),
                                Seg::Key("readers"),
                                Seg::Index(j),
                            ]),
                            "not declared",
                        )
                        .help("declare it under `users:`"),
                    );
                }
            }
        }

        // A load balancer on a member's address: PostgreSQL sees connections through it as the
        // member's own, so the superuser's administrative path is open through its port.
        let shared: Vec<String> = inv
            .groups
            .haproxy
            .iter()
            .filter_map(|lb| {
                let m = inv
                    .groups
                    .patroni
                    .iter()
                    .find(|m| m.address == lb.address)?;
                Some(if m.name == lb.name {
                    lb.name.clone()
                } else {
                    format!("{} (on {})", lb.name, m.name)
                })
            })
            .collect();
        if !shared.is_empty() {
            self.warn(
                self.key(&[Seg::Key("groups"), Seg::Key("haproxy")]),
                format!(
                    "HAProxy on a Patroni member's address ({}): PostgreSQL cannot tell \
                     connections through that load balancer from the member's own, so there the \
                     superuser's database postgres is reachable through it; give load balancers \
                     hosts of their own in production",
                    shared.join(", ")
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, GROUPS_COLOCATED};

    fn inv(extra: &str) -> String {
        format!("cluster: {{name: t}}\nplatform: debian-12\n{GROUPS_COLOCATED}{extra}")
    }

    #[test]
    fn good_catalog() {
        let (e, w) = check(&inv(
            "users:\n  - {name: app, password_env: APP_PW, connection_limit: 20}\n  \
             - {name: app_ro, login: false}\n  - {name: rep, password_file: r.pw, member_of: [app_ro, pg_monitor]}\n\
             databases:\n  - {name: app, owner: app, extensions: [pg_trgm], readers: [app_ro]}\n",
        ));
        assert!(e.is_empty(), "{e:?}");
        assert!(
            w.iter()
                .any(|w| w.contains("HAProxy on a Patroni member's address (a)")),
            "{w:?}"
        );
    }

    #[test]
    fn bad_catalog() {
        let (e, _) = check(&inv(
            "users:\n  - {name: postgres, password_env: X}\n  - {name: App, password_env: X}\n  \
             - {name: pgdeploy_check, password_env: X}\n  - {name: a, password_env: 1X}\n  \
             - {name: a, state: absent}\n  - {name: b}\n  - {name: c, login: false, member_of: [zz]}\n\
             databases:\n  - {name: template1}\n  - {name: d, owner: nobody, readers: [q], extensions: [Bad-Ext], encoding: EBCDIC}\n  \
             - {name: e, drop_data: true}\n",
        ));
        let want = [
            "role `postgres` cannot be declared",
            "role name `App` is not valid",
            "role `pgdeploy_check` cannot be declared",
            "is not an environment variable name",
            "role `a` is both declared and marked absent",
            "login role `b` has no password",
            "member of `zz`, which is not a declared role",
            "database `template1` cannot be declared",
            "owner `nobody` is not a declared role",
            "reader `q` is not a declared role",
            "extension `Bad-Ext` is not a valid name",
            "encoding `EBCDIC` is not supported",
            "drop_data without `state: absent`",
        ];
        for w in want {
            assert!(e.iter().any(|m| m.contains(w)), "{w}: {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }
}
