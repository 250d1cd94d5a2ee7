//! `groups`: the hosts of each group, their names and addresses, colocation, per-host ssh
//! overrides and per-host PostgreSQL parameters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use super::address::{canonical_address, check_address, is_valid_host_name};
use super::postgres::postgres_major;
use super::ssh::is_valid_user_name;
use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::{Pos, Seg};
use crate::inventory::{Group, Inventory};

impl Checker<'_> {
    pub(super) fn groups(&mut self, inv: &Inventory) {
        for g in Group::ALL {
            let n = inv.groups.get(g).len();
            let path = [Seg::Key("groups"), Seg::Key(g.as_str())];
            let pos = self.key(&path).or_else(|| self.key(&[Seg::Key("groups")]));
            if g == Group::Backup {
                self.backup_group(inv, pos);
                continue;
            }
            if n == 0 {
                let (message, help) = empty_group(g);
                self.push(Problem::new(message).label(pos, "empty").help(help));
            } else if g == Group::Etcd && n.is_multiple_of(2) {
                self.warn(
                    pos,
                    format!(
                        "{n} etcd hosts: an even count tolerates no more failures than {} (quorum \
                         is {} of {n}); use an odd number, 3 or 5",
                        n - 1,
                        n / 2 + 1
                    ),
                );
            } else if g == Group::Patroni && n == 1 {
                self.warn(
                    pos,
                    "1 patroni host: there is no replica to fail over to".to_string(),
                );
            }
        }

        let patroni_names: Vec<&str> = inv.groups.patroni.iter().map(|e| e.name.as_str()).collect();
        // First entry of each host name, and first owner of each address.
        let mut by_name: HashMap<&str, (Group, usize)> = HashMap::new();
        let mut by_addr: HashMap<String, (&str, Group, usize, &'static str)> = HashMap::new();
        let major = postgres_major(&inv.postgres.version);

        for g in Group::ALL {
            for (i, e) in inv.groups.get(g).iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Seg::Key("groups"),
                        Seg::Key(g.as_str()),
                        Seg::Index(i),
                        Seg::Key(k),
                    ]
                };
                let name_ok = is_valid_host_name(&e.name) && !e.name.ends_with('.');
                if !name_ok {
                    self.push(
                        Problem::new(format!("host name `{}` is not valid", e.name))
                            .label(self.exact(&at("name")), "invalid host name")
                            .help(
                                "use letters, digits and `-` (dots between parts), e.g. `pg1`: \
                                 the name becomes the Patroni and etcd member name and the \
                                 certificate name",
                            ),
                    );
                }
                let addr_ok = match check_address(&e.address) {
                    Ok(()) => true,
                    Err(why) => {
                        self.push(
                            Problem::new(format!(
                                "address of host `{}` is not valid: {why}",
                                e.name
                            ))
                            .label(self.exact(&at("address")), "invalid address")
                            .help(
                                "write an IPv4 or IPv6 literal (10.0.0.21, fd00::21) or a DNS host \
                                 name (pg1.example.com)",
                            ),
                        );
                        false
                    }
                };
                if addr_ok && g == Group::Etcd && e.address.parse::<IpAddr>().is_err() {
                    self.push(
                        Problem::new(format!(
                            "etcd host `{}` must be given by IP address, not `{}`",
                            e.name, e.address
                        ))
                        .label(self.exact(&at("address")), "a name, not an IP address")
                        .help(
                            "etcd listens on this address (its listen URLs take IP addresses \
                             only): write the host's IP address, e.g. 10.0.0.11",
                        ),
                    );
                }
                let addr6_ok = match &e.address6 {
                    Some(a6) => match a6.parse::<Ipv6Addr>() {
                        Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => true,
                        _ => {
                            self.push(
                                Problem::new(format!(
                                    "address6 of host `{}` is not a usable IPv6 address: `{a6}`",
                                    e.name
                                ))
                                .label(self.exact(&at("address6")), "not an IPv6 address")
                                .help("give the host's IPv6 address as a literal, e.g. fd00::21 (it is published as AAAA)"),
                            );
                            false
                        }
                    },
                    None => true,
                };

                // Same name: colocation (same address) or a conflict.
                match by_name.get(e.name.as_str()).copied() {
                    Some((g0, i0)) if g0 == g => {
                        self.push(
                            Problem::new(format!(
                                "host `{}` is listed twice in `groups.{}`",
                                e.name,
                                g.as_str()
                            ))
                            .label(self.exact(&at("name")), "listed again")
                            .label(
                                self.exact(&[
                                    Seg::Key("groups"),
                                    Seg::Key(g.as_str()),
                                    Seg::Index(i0),
                                    Seg::Key("name"),
                                ]),
                                "first here",
                            )
                            .help("list each host once per group; remove one of the entries"),
                        );
                        continue;
                    }
                    Some((g0, i0)) => {
                        let first = &inv.groups.get(g0)[i0];
                        let first_at = |k: &'static str| {
                            vec![
                                Seg::Key("groups"),
                                Seg::Key(g0.as_str()),
                                Seg::Index(i0),
                                Seg::Key(k),
                            ]
                        };
                        if addr_ok
                            && canonical_address(&first.address) != canonical_address(&e.address)
                        {
                            self.push(
                                Problem::new(format!(
                                    "host `{}` has address `{}` in `groups.{}` but `{}` in \
                                     `groups.{}`",
                                    e.name,
                                    e.address,
                                    g.as_str(),
                                    first.address,
                                    g0.as_str()
                                ))
                                .label(self.exact(&at("address")), "this address")
                                .label(self.exact(&first_at("address")), "differs from this one")
                                .help(
                                    "a host in several groups is one machine (colocation) and has \
                                     one address; if these are two machines, give them different \
                                     names",
                                ),
                            );
                        }
                        let earlier6 =
                            earlier_entries(inv, g, i, &e.name).find_map(|x| x.address6.as_deref());
                        if let (true, Some(a6), Some(b6)) =
                            (addr6_ok, e.address6.as_deref(), earlier6)
                        {
                            if canonical_address(a6) != canonical_address(b6) {
                                self.push(
                                Problem::new(format!(
                                    "host `{}` has address6 `{a6}` in `groups.{}` but `{b6}` in \
                                     an earlier entry",
                                    e.name,
                                    g.as_str()
                                ))
                                .label(self.exact(&at("address6")), "differs")
                                .help("a host has one IPv6 address: write `address6` once (on any of its entries) or the same value everywhere"),
                            );
                            }
                        }
                        if e.ssh.is_some() && ssh_json(&e.ssh) != ssh_json(&first.ssh) {
                            self.push(
                                Problem::new(format!(
                                    "host `{}` has different `ssh` settings in `groups.{}` than in \
                                     its first entry (`groups.{}`)",
                                    e.name,
                                    g.as_str(),
                                    g0.as_str()
                                ))
                                .label(self.key(&at("ssh")), "ignored")
                                .help("pgdeploy connects once per host: give `ssh` on the host's first entry (it applies in every group), or the same settings"),
                            );
                        }
                    }
                    None => {
                        by_name.insert(e.name.as_str(), (g, i));
                    }
                }

                // Same address under another name.
                let mut addrs: Vec<(String, &'static str)> = Vec::new();
                if addr_ok {
                    addrs.push((canonical_address(&e.address), "address"));
                }
                if addr6_ok {
                    if let Some(a6) = &e.address6 {
                        addrs.push((canonical_address(a6), "address6"));
                    }
                }
                for (addr, key) in addrs {
                    match by_addr.get(&addr).copied() {
                        Some((other, g0, i0, key0)) if other != e.name => {
                            self.push(
                                Problem::new(format!(
                                    "address `{addr}` belongs to two hosts: `{other}` and `{}`",
                                    e.name
                                ))
                                .label(self.exact(&at(key)), format!("used by `{}`", e.name))
                                .label(
                                    self.exact(&[
                                        Seg::Key("groups"),
                                        Seg::Key(g0.as_str()),
                                        Seg::Index(i0),
                                        Seg::Key(key0),
                                    ]),
                                    format!("used by `{other}`"),
                                )
                                .help(format!(
                                    "if they are one machine, use one name in every group (same \
                                     name and address in several groups is how colocation is \
                                     written, e.g. `{other}` in both); otherwise fix the address"
                                )),
                            );
                        }
                        Some(_) => {}
                        None => {
                            by_addr.insert(addr, (e.name.as_str(), g, i, key));
                        }
                    }
                }

                // Per-host SSH overrides.
                if let Some(o) = &e.ssh {
                    let ssh_at = |k: &'static str| {
                        vec![
                            Seg::Key("groups"),
                            Seg::Key(g.as_str()),
                            Seg::Index(i),
                            Seg::Key("ssh"),
                            Seg::Key(k),
                        ]
                    };
                    if o.port == Some(0) {
                        self.push(
                            Problem::new(format!("SSH port of host `{}` is 0", e.name))
                                .label(self.exact(&ssh_at("port")), "must be 1-65535")
                                .help("give the port sshd listens on (usually 22)"),
                        );
                    }
                    if let Some(u) = &o.user {
                        if !is_valid_user_name(u) {
                            self.push(
                                Problem::new(format!(
                                    "SSH user `{u}` of host `{}` is not a valid user name",
                                    e.name
                                ))
                                .label(self.exact(&ssh_at("user")), "invalid user name")
                                .help("give the login name on the host, e.g. `root`"),
                            );
                        }
                    }
                    if let Some(j) = &o.jump_host {
                        self.jump_host(j, &ssh_at("jump_host"));
                    }
                    if o.private_key
                        .as_deref()
                        .is_some_and(|k| k.trim().is_empty())
                    {
                        self.push(
                            Problem::new(format!("SSH private_key of host `{}` is empty", e.name))
                                .label(self.exact(&ssh_at("private_key")), "empty path")
                                .help("give a key file or remove `private_key`"),
                        );
                    }
                }

                // Per-host PostgreSQL parameters.
                if !e.postgres_parameters.is_empty() {
                    if !patroni_names.contains(&e.name.as_str()) {
                        self.push(
                            Problem::new(format!(
                                "host `{}` has postgres_parameters but is not in `groups.patroni`",
                                e.name
                            ))
                            .label(self.key(&at("postgres_parameters")), "no PostgreSQL here")
                            .help("move them to a Patroni host, or to `postgres.parameters` for all members"),
                        );
                    } else {
                        let mut base = at("postgres_parameters");
                        base.truncate(5);
                        self.parameters(&e.postgres_parameters, &base, Some(&e.name), major);
                    }
                }
            }
        }

        // Effective SSH user and become, per host (one problem per place that sets the user).
        let mut not_root: Vec<(Option<Pos>, String, Vec<String>)> = Vec::new();
        for h in inv.hosts() {
            if h.ssh.user != "root" && h.ssh.become_ == crate::inventory::Become::None {
                let pos = self
                    .host_ssh_pos(inv, &h.name, "user")
                    .or_else(|| self.exact(&[Seg::Key("ssh"), Seg::Key("user")]));
                match not_root
                    .iter_mut()
                    .find(|(p, u, _)| *p == pos && *u == h.ssh.user)
                {
                    Some((_, _, hosts)) => hosts.push(h.name.clone()),
                    None => not_root.push((pos, h.ssh.user.clone(), vec![h.name.clone()])),
                }
            }
        }
        let total = inv.hosts().len();
        for (pos, user, hosts) in not_root {
            let who = if hosts.len() == total && total > 1 {
                "every host is".to_string()
            } else if hosts.len() == 1 {
                format!("host `{}` is", hosts[0])
            } else {
                format!(
                    "hosts {} are",
                    hosts
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            self.push(
                Problem::new(format!(
                    "{who} reached as `{user}` without `become`: pgdeploy needs root there"
                ))
                .label(pos, "not root")
                .help("set `ssh.become: sudo` (the user needs sudo rights), or connect as root"),
            );
        }
    }

    /// Position of a per-host ssh override key on the host's first entry, when written.
    /// `groups.backup`: one repository host, not a database host (it would be lost with that
    /// host, and pgBackRest's repository and member settings would share one configuration
    /// file and one TLS server port there).
    fn backup_group(&mut self, inv: &Inventory, pos: Option<Pos>) {
        let entries = &inv.groups.backup;
        if entries.len() > 1 {
            self.push(
                Problem::new(format!(
                    "{} backup hosts: pgdeploy keeps one pgBackRest repository",
                    entries.len()
                ))
                .label(pos, "more than one")
                .help("list one host under `groups.backup`, the repository host"),
            );
        }
        for (i, e) in entries.iter().enumerate() {
            if inv.groups.patroni.iter().any(|p| p.name == e.name) {
                let at = self
                    .exact(&[
                        Seg::Key("groups"),
                        Seg::Key("backup"),
                        Seg::Index(i),
                        Seg::Key("name"),
                    ])
                    .or(pos);
                self.push(
                    Problem::new(format!(
                        "the backup repository cannot be on database host `{}`",
                        e.name
                    ))
                    .label(at, "a Patroni member")
                    .help(
                        "give the repository a host of its own (an etcd or HAProxy host will \
                         do): on a member it would be lost with that host, and the repository's \
                         and the member's pgBackRest settings cannot share one host",
                    ),
                );
            }
        }
    }

    fn host_ssh_pos(&self, inv: &Inventory, name: &str, key: &str) -> Option<Pos> {
        for g in Group::ALL {
            if let Some(i) = inv.groups.get(g).iter().position(|e| e.name == name) {
                return self.exact(&[
                    Seg::Key("groups"),
                    Seg::Key(g.as_str()),
                    Seg::Index(i),
                    Seg::Key("ssh"),
                    Seg::Key(key),
                ]);
            }
        }
        None
    }
}

/// What to say about a group without hosts.
pub(crate) fn empty_group(g: Group) -> (&'static str, &'static str) {
    match g {
        Group::Etcd => (
            "no etcd host: Patroni needs etcd to elect the primary",
            "list the etcd hosts under `groups.etcd` (name and address each): 3 for production, \
             1 for a test setup; they may be the Patroni hosts themselves",
        ),
        Group::Patroni => (
            "no patroni host: there is no PostgreSQL to deploy",
            "list the PostgreSQL hosts under `groups.patroni`: 3 for production (one primary, \
             two replicas)",
        ),
        Group::Haproxy => (
            "no haproxy host: clients reach the primary through HAProxy",
            "list the HAProxy hosts under `groups.haproxy`: 3 behind the DNS name for \
             production; 1, possibly on a Patroni host, for a test setup",
        ),
        Group::Backup => (
            "no backup host",
            "name the pgBackRest repository host under `groups.backup`",
        ),
    }
}

/// The entries of host `name` that come before entry `i` of group `g` (inventory order).
fn earlier_entries<'i>(
    inv: &'i Inventory,
    g: Group,
    i: usize,
    name: &'i str,
) -> impl Iterator<Item = &'i crate::inventory::HostEntry> + 'i {
    Group::ALL
        .into_iter()
        .flat_map(move |g2| {
            let entries = inv.groups.get(g2);
            let end = match g2.cmp(&g) {
                std::cmp::Ordering::Less => entries.len(),
                std::cmp::Ordering::Equal => i,
                std::cmp::Ordering::Greater => 0,
            };
            entries[..end].iter()
        })
        .filter(move |e| e.name == name)
}

fn ssh_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
