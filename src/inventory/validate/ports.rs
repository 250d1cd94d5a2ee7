//! Ports of every service (`postgres`, `patroni`, `etcd`, `haproxy`, `backup`, `ssh`) and their
//! collisions on hosts that run several services.

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::{Pos, Seg};
use crate::inventory::{Group, Inventory};

impl Checker<'_> {
    pub(super) fn ports(&mut self, inv: &Inventory) {
        struct Setting {
            name: &'static str,
            path: [Seg<'static>; 2],
            port: u16,
            group: Group,
            default: u16,
        }
        let d_pg = crate::inventory::Postgres::default();
        let d_pat = crate::inventory::Patroni::default();
        let d_etcd = crate::inventory::Etcd::default();
        let d_hap = crate::inventory::Haproxy::default();
        let d_bak = crate::inventory::Backup::default();
        let settings = [
            Setting {
                name: "postgres.port",
                path: [Seg::Key("postgres"), Seg::Key("port")],
                port: inv.postgres.port,
                group: Group::Patroni,
                default: d_pg.port,
            },
            Setting {
                name: "patroni.restapi_port",
                path: [Seg::Key("patroni"), Seg::Key("restapi_port")],
                port: inv.patroni.restapi_port,
                group: Group::Patroni,
                default: d_pat.restapi_port,
            },
            Setting {
                name: "etcd.client_port",
                path: [Seg::Key("etcd"), Seg::Key("client_port")],
                port: inv.etcd.client_port,
                group: Group::Etcd,
                default: d_etcd.client_port,
            },
            Setting {
                name: "etcd.peer_port",
                path: [Seg::Key("etcd"), Seg::Key("peer_port")],
                port: inv.etcd.peer_port,
                group: Group::Etcd,
                default: d_etcd.peer_port,
            },
            Setting {
                name: "haproxy.primary_port",
                path: [Seg::Key("haproxy"), Seg::Key("primary_port")],
                port: inv.haproxy.primary_port,
                group: Group::Haproxy,
                default: d_hap.primary_port,
            },
            Setting {
                name: "haproxy.replica_port",
                path: [Seg::Key("haproxy"), Seg::Key("replica_port")],
                port: inv.haproxy.replica_port,
                group: Group::Haproxy,
                default: d_hap.replica_port,
            },
            Setting {
                name: "haproxy.stats_port",
                path: [Seg::Key("haproxy"), Seg::Key("stats_port")],
                port: inv.haproxy.stats_port,
                group: Group::Haproxy,
                default: d_hap.stats_port,
            },
            Setting {
                name: "backup.tls_port",
                path: [Seg::Key("backup"), Seg::Key("tls_port")],
                port: inv.backup.tls_port,
                group: Group::Backup,
                default: d_bak.tls_port,
            },
        ];
        for s in &settings {
            if s.port == 0 {
                self.push(
                    Problem::new(format!("`{}` is 0, which is not a usable port", s.name))
                        .label(self.exact(&s.path), "must be 1-65535")
                        .help(format!(
                            "give a port between 1 and 65535, or remove the setting for the \
                             default {}",
                            s.default
                        )),
                );
            }
        }
        if inv.ssh.port == 0 {
            self.push(
                Problem::new("`ssh.port` is 0, which is not a usable port")
                    .label(
                        self.exact(&[Seg::Key("ssh"), Seg::Key("port")]),
                        "must be 1-65535",
                    )
                    .help("give the port sshd listens on (22 by default)"),
            );
        }

        // Collisions on each host between the services it runs (and its sshd).
        // Key: the pair of settings; value: the hosts where they collide.
        let mut clashes: Vec<((usize, usize), u16, Vec<String>)> = Vec::new();
        const SSH: usize = usize::MAX;
        for h in inv.hosts() {
            let mut used: Vec<(usize, u16)> = settings
                .iter()
                .enumerate()
                .filter(|(_, s)| h.in_group(s.group) && s.port != 0)
                .map(|(i, s)| (i, s.port))
                .collect();
            if h.ssh.port != 0 {
                used.push((SSH, h.ssh.port));
            }
            for a in 0..used.len() {
                for b in a + 1..used.len() {
                    if used[a].1 == used[b].1 {
                        let key = (used[a].0, used[b].0);
                        match clashes.iter_mut().find(|(k, _, _)| *k == key) {
                            Some((_, _, hosts)) => hosts.push(h.name.clone()),
                            None => clashes.push((key, used[a].1, vec![h.name.clone()])),
                        }
                    }
                }
            }
        }
        for ((a, b), port, hosts) in clashes {
            let describe = |i: usize| -> (String, Option<Pos>) {
                if i == SSH {
                    (
                        "the SSH port".to_string(),
                        self.exact(&[Seg::Key("ssh"), Seg::Key("port")]),
                    )
                } else {
                    let s = &settings[i];
                    let pos = self.exact(&s.path);
                    let name = if pos.is_none() {
                        format!("`{}` (default)", s.name)
                    } else {
                        format!("`{}`", s.name)
                    };
                    (name, pos)
                }
            };
            let (name_a, pos_a) = describe(a);
            let (name_b, pos_b) = describe(b);
            let on = if hosts.len() == 1 {
                format!("host `{}`", hosts[0])
            } else {
                format!(
                    "hosts {}",
                    hosts
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let mut problem = Problem::new(format!(
                "port {port} is used twice on {on}: by {name_a} and by {name_b}"
            ));
            if let Some(pb) = pos_b {
                problem = problem.label(Some(pb), format!("port {port}"));
            }
            if let Some(pa) = pos_a {
                problem = problem.label(Some(pa), format!("also port {port}"));
            }
            self.push(problem.help(
                "services on one host need distinct ports (a host in several groups runs all \
                 their services): change one of these ports",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::inventory::validate::tests::{check, GROUPS_COLOCATED};

    #[test]
    fn colocation_is_allowed_and_checked_for_ports() {
        let base = format!("cluster: {{name: c}}\n{GROUPS_COLOCATED}");
        // The only warning: the load balancer on a member's address (the superuser's path).
        let (errors, warnings) = check(&base);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("HAProxy on a Patroni member's address (a)"));
        // etcd's client port equal to HAProxy's stats port clashes only because `a` runs both.
        let clash =
            format!("cluster: {{name: c}}\nhaproxy: {{stats_port: 2379}}\n{GROUPS_COLOCATED}");
        let (errors, _) = check(&clash);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("port 2379 is used twice on host `a`"),
            "{errors:?}"
        );
        // Without colocation the same ports are fine.
        let apart = "cluster: {name: c}\nhaproxy: {stats_port: 2379}\ngroups:\n  \
            etcd: [{name: e, address: 192.0.2.9}]\n  patroni: [{name: a, address: 192.0.2.1}]\n  \
            haproxy: [{name: h, address: 192.0.2.8}]\n";
        let (errors, warnings) = check(apart);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "single patroni host warns: {warnings:?}");
    }
}
