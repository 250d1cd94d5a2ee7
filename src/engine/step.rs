//! Orchestration steps: cluster operations as data.
//!
//! Files, packages and units of one host are [`Change`](super::change::Change)s. What spans
//! hosts and must run in a given order (start the first member, wait until it leads, patch the
//! DCS, restart one member, switch over, tag a member) is a [`Step`]: a typed value with its
//! inputs. A phase's plan emits them in order; `check` prints them (and `--format json` gives
//! them as objects); `apply` runs exactly those, in that order, checking each one's
//! precondition first. A step that depends on what an earlier one reveals stays
//! [`Step::Deferred`]; the journal records the concrete steps it became.

use super::change::{Change, UnitAction};
use serde::Serialize;
use serde_json::Value;

/// One setting of the DCS that a patch changes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyChange {
    pub key: String,
    /// The value the plan saw (None: unset).
    pub from: Option<String>,
    pub to: String,
}

/// A package a step installs (`from` is what the plan saw installed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageChange {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
}

/// A condition a run waits for before it goes on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "gate", rename_all = "kebab-case")]
pub enum Gate {
    /// `member` leads the Patroni cluster and runs.
    Leads { member: String },
    /// Patroni reports `member` running (and, for a replica, the leader sees it streaming).
    MemberRunning { member: String },
    /// `member` runs PostgreSQL `minor` and streams from the leader with at most `max_lag_bytes`.
    Streams {
        member: String,
        minor: String,
        max_lag_bytes: u64,
    },
    /// Every member of the cluster has been through an HA loop that started after this gate
    /// began (so each applied a reload or a new DCS setting).
    NextLoop,
    /// One leader runs and every other member streams from it.
    Converged,
    /// `member` is no longer in the Patroni cluster (its member key expired).
    MemberGone { member: String },
    /// The leader has dropped the replication slot `slot`.
    SlotDropped { slot: String },
    /// Every etcd member is healthy.
    EtcdHealthy,
    /// The etcd member on `member` answers healthy.
    EtcdMemberHealthy { member: String },
    /// HAProxy on `member` routes writes to exactly one leader.
    RoutesToLeader { member: String },
}

/// Which deferred step it is: what it becomes at apply time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expand {
    /// Restart, one at a time (replicas first, the leader last), the members that report
    /// `pending_restart`; a few rounds, as a replica may ask again after the leader restarted.
    PendingRestarts,
    /// Compare the cluster-wide settings with the DCS once a new cluster leads, and patch it.
    DcsAfterBootstrap,
    /// Compare the declared roles and databases with the leader's catalog once a leader
    /// runs, and change what differs.
    Catalog,
}

/// One orchestration step, run on `PlannedStep::host`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// A systemd unit action at this point of the order.
    Unit {
        unit: String,
        action: UnitAction,
        reason: String,
    },
    /// Patch Patroni's dynamic configuration in the DCS with `patch` (JSON merge).
    DcsPatch {
        patch: Value,
        changes: Vec<KeyChange>,
    },
    /// Restart PostgreSQL of `member` through Patroni (`pending`: only if it still reports
    /// pending_restart).
    RestartMember {
        member: String,
        pending: bool,
        reason: String,
    },
    /// Planned switchover from the leader `from` to the replica `to`.
    Switchover { from: String, to: String },
    /// Set (`on`) or clear Patroni's nofailover and noloadbalance tags of `member`, by its
    /// configuration file and a reload, and wait until Patroni reports them.
    SetTags { member: String, on: bool },
    /// Install exact package versions (and hold them), with service starts forbidden.
    Install {
        member: String,
        packages: Vec<PackageChange>,
    },
    /// Refuse to go on unless the cluster is fit for a rolling upgrade (lag, old
    /// transactions, every member streaming, etcd healthy).
    UpgradePrechecks {
        max_lag_bytes: u64,
        max_xact_age_secs: u64,
    },
    /// Stop and disable Patroni on `member` (at `address`), which leaves the cluster; its data
    /// directory stays.
    LeavePatroni { member: String, address: String },
    /// Add `member` to the running etcd cluster (`etcdctl member add` through `endpoints`, first
    /// removing `stale_id`, an earlier add that never started), start it, and wait until it
    /// and the whole cluster are healthy.
    EtcdMemberAdd {
        member: String,
        peer_url: String,
        endpoints: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stale_id: Option<String>,
    },
    /// Remove the etcd member `name` (id `id`, hexadecimal) from the cluster, through this
    /// host, while every member is healthy.
    EtcdMemberRemove {
        name: String,
        id: String,
        /// Members the etcd cluster has after the removal.
        size_after: usize,
    },
    /// Give Patroni its etcd identity (idempotent, as etcd's root): role `user` may read and
    /// write the keys under `prefix` and nothing else; user `user` has that role and the
    /// password from the secrets; user root (pgdeploy's administrator certificate, no
    /// password) has role root.
    EtcdAccess { user: String, prefix: String },
    /// Turn etcd authentication on, once every Patroni member's configuration names its etcd
    /// user and `user` exists: from then on only root and `user` (on `prefix`) reach the keys.
    EtcdAuthEnable { user: String, prefix: String },
    /// Disable `unit` on a host that left the cluster (at `address`), so that it stays stopped
    /// after a reboot. A host that cannot be reached only gets a warning.
    DisableRetired {
        name: String,
        address: String,
        unit: String,
    },
    /// Change the A/AAAA records of `name` from `before` to `before - remove + add` with `ttl`
    /// (`ttl_from`: the TTL the kept records had, when it changes), in one update whose
    /// prerequisite is `before`: a name that changed meanwhile is left alone.
    DnsRecordSet {
        name: String,
        before: Vec<String>,
        add: Vec<String>,
        remove: Vec<String>,
        ttl: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_from: Option<u32>,
    },
    /// Change the leader's catalog (roles, databases, extensions, privileges): `sql` runs as
    /// the superuser over the member's local socket, in `database`, refused if the member no
    /// longer leads. `password_of`: the SQL's `:'pw'` is a new SCRAM verifier of that role's
    /// password, made at run time (never in the plan). `drop_role`: refused while the role
    /// owns anything; its privileges are revoked in every database first.
    Catalog {
        change: String,
        database: String,
        sql: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        password_of: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        drop_role: Option<String>,
    },
    /// Create the pgBackRest stanza `stanza` in the repository (on the repository host).
    StanzaCreate { stanza: String },
    /// `pgbackrest check`: the leader's next WAL segment reaches the repository.
    ArchiveCheck { stanza: String },
    /// Remove the Patroni cluster's state from the DCS (every member's Patroni is stopped).
    DcsRemove { cluster: String },
    /// Move the data directory aside to `aside` (kept) and leave an empty one. `resume`: an
    /// interrupted restore moved it there already; what the data directory holds now is that
    /// restore's own work, which is stopped and emptied.
    DataAside {
        data_dir: String,
        aside: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resume: bool,
    },
    /// Restore backup set `set` into the empty data directory and recover it, alone, to
    /// `target`, where it promotes; then record in a marker beside the data directory that it
    /// restored (so that a run again after an interruption does not restore twice).
    Restore {
        target: crate::phases::restore::Target,
        set: Option<String>,
        data_dir: String,
    },
    /// Remove a moved-aside data directory.
    DataAsideRemove { aside: String },
    /// Remove the restore's marker: the restore is finished (the last step of a restore).
    RestoreDone { marker: String },
    /// Something found that the run keeps as it is, and why (not a change).
    Note { text: String },
    /// Wait until a condition holds (within a generous deadline).
    Wait { gate: Gate },
    /// Known only once earlier steps ran.
    Deferred {
        expand: Expand,
        what: String,
        why: String,
    },
}

/// A step and the host it runs on (or through).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStep {
    pub host: String,
    #[serde(flatten)]
    pub step: Step,
}

impl PlannedStep {
    pub fn new(host: &str, step: Step) -> Self {
        PlannedStep {
            host: host.to_string(),
            step,
        }
    }
}

impl Gate {
    pub fn summary(&self) -> String {
        match self {
            Gate::Leads { member } => format!("{member} leads the cluster"),
            Gate::MemberRunning { member } => format!("member {member} runs (and streams)"),
            Gate::Streams {
                member,
                minor,
                max_lag_bytes,
            } => format!(
                "{member} runs {minor} and streams with lag under {} MB",
                max_lag_bytes / 1_048_576
            ),
            Gate::NextLoop => "every member has been through a new HA loop".into(),
            Gate::Converged => "one leader runs and every replica streams from it".into(),
            Gate::MemberGone { member } => format!("{member} has left the Patroni cluster"),
            Gate::SlotDropped { slot } => {
                format!("the leader has dropped replication slot {slot}")
            }
            Gate::EtcdHealthy => "every etcd member is healthy".into(),
            Gate::EtcdMemberHealthy { member } => format!("etcd member {member} is healthy"),
            Gate::RoutesToLeader { member } => {
                format!("HAProxy on {member} routes writes to exactly one leader")
            }
        }
    }
}

impl Step {
    /// The step for a host plan's unit action (None for any other change): phases move their
    /// unit actions out of the host plans to order them across hosts.
    pub fn from_unit_change(c: &Change) -> Option<Step> {
        match c {
            Change::Unit {
                unit,
                action,
                reason,
            } => Some(Step::Unit {
                unit: unit.clone(),
                action: *action,
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// One line, as `check` prints it and the journal records it.
    pub fn summary(&self) -> String {
        match self {
            Step::Unit {
                unit,
                action,
                reason,
            } => format!("! unit {} {unit} ({reason})", action.verb()),
            Step::DcsPatch { patch, changes } => {
                let what: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} -> {}",
                            c.key,
                            c.from.as_deref().unwrap_or("(unset)"),
                            c.to
                        )
                    })
                    .collect();
                format!("~ patch DCS {patch} ({})", what.join(", "))
            }
            Step::RestartMember {
                member,
                pending,
                reason,
            } => format!(
                "! restart PostgreSQL of {member} through Patroni{} ({reason})",
                if *pending { " if still pending" } else { "" }
            ),
            Step::Switchover { from, to } => format!("! switchover from {from} to {to}"),
            Step::SetTags { member, on } => format!(
                "~ tags of {member}: nofailover, noloadbalance = {on} (config, reload Patroni)"
            ),
            Step::Install { member, packages } => {
                let p: Vec<String> = packages
                    .iter()
                    .map(|p| match &p.from {
                        Some(f) => format!("{} {f} -> {}", p.name, p.to),
                        None => format!("{} {}", p.name, p.to),
                    })
                    .collect();
                format!("~ install and hold on {member}: {}", p.join(", "))
            }
            Step::UpgradePrechecks {
                max_lag_bytes,
                max_xact_age_secs,
            } => format!(
                "? gate: fit for a rolling upgrade (lag <= {} MB, no transaction older than {max_xact_age_secs} s, all streaming, etcd healthy)",
                max_lag_bytes / 1_048_576
            ),
            Step::LeavePatroni { member, address } => format!(
                "! systemctl disable --now patroni.service on {member} ({address}): it leaves the Patroni cluster; its data directory stays"
            ),
            Step::EtcdMemberAdd {
                member,
                peer_url,
                endpoints,
                stale_id,
            } => format!(
                "! etcdctl member add {member} --peer-urls={peer_url}{} and start it (the cluster has {} members; the others keep running)",
                stale_id
                    .as_ref()
                    .map(|id| format!(", after removing the stale member {id}"))
                    .unwrap_or_default(),
                endpoints.len()
            ),
            Step::EtcdMemberRemove {
                name,
                id,
                size_after,
            } => format!(
                "! etcdctl member remove {id} ({name}): {size_after} members remain; only while every member is healthy"
            ),
            Step::EtcdAccess { user, prefix } => format!(
                "~ etcd access: role {user} may read and write {prefix}* only; user {user} (password from the secrets) has it; user root (pgdeploy's certificate only) has role root"
            ),
            Step::EtcdAuthEnable { user, prefix } => format!(
                "! etcdctl auth enable: only root and {user} (on {prefix}*) reach the keys; every Patroni member's configuration names {user}"
            ),
            Step::DisableRetired {
                name,
                address,
                unit,
            } => format!("! disable --now {unit} on {name} ({address}), which left the cluster"),
            Step::DnsRecordSet {
                name,
                add,
                remove,
                ttl,
                ttl_from,
                ..
            } => {
                let mut parts: Vec<String> = add
                    .iter()
                    .map(|a| format!("+ {} {a} (ttl {ttl})", record_type(a)))
                    .collect();
                parts.extend(remove.iter().map(|a| format!("- {} {a}", record_type(a))));
                if let Some(from) = ttl_from {
                    parts.push(format!("ttl {from} -> {ttl}"));
                }
                format!("~ dns {name}: {}", parts.join(", "))
            }
            Step::Catalog { change, .. } => change.clone(),
            Step::StanzaCreate { stanza } => format!(
                "+ pgbackrest stanza-create {stanza} (the repository has no stanza for this cluster)"
            ),
            Step::ArchiveCheck { stanza } => format!(
                "? gate: pgbackrest check {stanza} (the leader's next WAL segment reaches the archive)"
            ),
            Step::DcsRemove { cluster } => format!(
                "! patronictl remove {cluster}: the cluster's state in the DCS is removed"
            ),
            Step::DataAside {
                data_dir,
                aside,
                resume: false,
            } => format!("! mv {data_dir} {aside} (kept until the restored cluster runs)"),
            Step::DataAside {
                data_dir, aside, ..
            } => format!(
                "! empty {data_dir}: the interrupted restore's work is done again ({aside} is kept until the restored cluster runs)"
            ),
            Step::Restore { target, set, .. } => format!(
                "! pgbackrest restore of set {} to {}; PostgreSQL replays the archive alone and promotes there, then stops (a marker beside the data directory records it)",
                set.as_deref().unwrap_or("(chosen by pgBackRest)"),
                target.describe()
            ),
            Step::DataAsideRemove { aside } => format!("! rm -rf {aside} (the restored cluster runs)"),
            Step::RestoreDone { marker } => format!("! rm {marker}: the restore is finished"),
            Step::Note { text } => format!("= {text}"),
            Step::Wait { gate } => format!("? wait: {}", gate.summary()),
            Step::Deferred { what, why, .. } => format!("? {what} (deferred: {why})"),
        }
    }

    /// Whether running it changes something (waits, gates and deferred notes do not).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Step::Wait { .. }
                | Step::Deferred { .. }
                | Step::UpgradePrechecks { .. }
                | Step::ArchiveCheck { .. }
                | Step::Note { .. }
        )
    }
}

fn record_type(addr: &str) -> &'static str {
    if addr.contains(':') {
        "AAAA"
    } else {
        "A"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_serialize_as_tagged_objects() {
        let s = PlannedStep::new(
            "pg1",
            Step::Switchover {
                from: "pg1".into(),
                to: "pg2".into(),
            },
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"host": "pg1", "step": "switchover", "from": "pg1", "to": "pg2"})
        );
        let w = Step::Wait {
            gate: Gate::Leads {
                member: "pg1".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            serde_json::json!({"step": "wait", "gate": {"gate": "leads", "member": "pg1"}})
        );
        assert!(!w.is_change());
        assert_eq!(w.summary(), "? wait: pg1 leads the cluster");
    }
}
