//! The pure plan: desired state + facts -> changes. No I/O here.

use super::change::{unified_diff, Change, UnitAction};
use super::facts::{HostFacts, PathKind, ProbeRequest};
use super::roles::{OnChange, UnitState};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredDir {
    pub path: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Created by the packages phase, before installing.
    pub before_packages: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub secret: bool,
    pub notify: Vec<String>,
    pub validate: Option<String>,
    /// Written by the packages phase, before installing.
    pub before_packages: bool,
    /// For generated files that are not configuration (a repository index): what `check`
    /// shows instead of the content diff.
    pub summary: Option<String>,
    /// Replaced together with the other files of the same pair (see the role's `pair`).
    pub pair: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPackage {
    pub name: String,
    pub version: Option<String>,
    pub hold: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DesiredUnit {
    pub name: String,
    pub enabled: bool,
    pub state: UnitState,
    pub on_change: OnChange,
}

/// A role rendered for one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub dirs: Vec<DesiredDir>,
    pub files: Vec<DesiredFile>,
    pub packages: Vec<DesiredPackage>,
    pub sysctls: Vec<(String, String)>,
    pub units: Vec<DesiredUnit>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The names of `units`, each once, in order.
fn unit_names<'a>(units: impl Iterator<Item = &'a DesiredUnit>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for u in units {
        if !names.contains(&u.name) {
            names.push(u.name.clone());
        }
    }
    names
}

impl Desired {
    /// What must be probed to plan this.
    pub fn probe_request(&self) -> ProbeRequest {
        ProbeRequest {
            paths: self
                .dirs
                .iter()
                .map(|d| d.path.clone())
                .chain(self.files.iter().map(|f| f.path.clone()))
                .collect(),
            packages: self.packages.iter().map(|p| p.name.clone()).collect(),
            units: unit_names(self.units.iter()),
            // Wanted disabled by every role that names it.
            disabled_units: unit_names(self.units.iter().filter(|u| {
                self.units
                    .iter()
                    .filter(|o| o.name == u.name)
                    .all(|o| !o.enabled)
            })),
            sysctls: self.sysctls.iter().map(|(k, _)| k.clone()).collect(),
        }
    }

    /// Files whose content differs from the host (their content is fetched for diffs).
    pub fn differing_files(&self, facts: &HostFacts) -> Vec<String> {
        self.files
            .iter()
            .filter(|f| {
                let fact = facts.paths.get(&f.path);
                matches!(fact, Some(p) if p.kind == PathKind::File
                    && p.sha256.as_deref() != Some(sha256_hex(&f.content).as_str()))
            })
            .map(|f| f.path.clone())
            .collect()
    }
}

/// Plan files, directories, sysctls and units (packages are planned by [`plan_packages`]).
pub fn plan_resources(desired: &Desired, facts: &HostFacts, secrets: &[String]) -> Vec<Change> {
    let mut out = Vec::new();
    for d in &desired.dirs {
        let f = facts.paths.get(&d.path);
        match f {
            Some(p) if p.kind == PathKind::Dir => {
                if p.mode != d.mode || p.owner != d.owner || p.group != d.group {
                    out.push(Change::Directory {
                        path: d.path.clone(),
                        mode: d.mode,
                        owner: d.owner.clone(),
                        group: d.group.clone(),
                        exists: true,
                    });
                }
            }
            _ => out.push(Change::Directory {
                path: d.path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
                exists: false,
            }),
        }
    }
    let mut notified: Vec<(String, String)> = Vec::new(); // (unit, because path)
    for want in &desired.files {
        let fact = facts.paths.get(&want.path);
        let want_sha = sha256_hex(&want.content);
        let (exists, same_content, same_meta, old) = match fact {
            Some(p) if p.kind == PathKind::File => (
                true,
                p.sha256.as_deref() == Some(want_sha.as_str()),
                p.mode == want.mode && p.owner == want.owner && p.group == want.group,
                p.content.clone(),
            ),
            _ => (false, false, false, None),
        };
        if exists && same_content && same_meta {
            continue;
        }
        let diff = if same_content {
            String::new()
        } else if let Some(summary) = &want.summary {
            format!("{summary} (generated; content not shown)\n")
        } else {
            let shown_secrets: Vec<String> = secrets.to_vec();
            if want.secret {
                redacted_secret_diff(&want.path, old.as_deref(), &want.content, &shown_secrets)
            } else {
                unified_diff(&want.path, old.as_deref(), &want.content, &shown_secrets)
            }
        };
        if !same_content {
            for u in &want.notify {
                notified.push((u.clone(), want.path.clone()));
            }
        }
        out.push(Change::File {
            path: want.path.clone(),
            mode: want.mode,
            owner: want.owner.clone(),
            group: want.group.clone(),
            old: if exists {
                Some(old.unwrap_or_default())
            } else {
                None
            },
            new: want.content.clone(),
            diff,
            content_changed: !same_content,
            secret: want.secret,
            validate: want.validate.clone(),
            pair: want.pair.clone(),
            notify: if same_content {
                Vec::new()
            } else {
                want.notify.clone()
            },
        });
    }
    for (k, v) in &desired.sysctls {
        let cur = facts.sysctls.get(k);
        if cur.map(|c| norm_ws(c)) != Some(norm_ws(v)) {
            if facts.sysctl_writable.contains(k) {
                out.push(Change::Sysctl {
                    name: k.clone(),
                    from: cur.cloned(),
                    to: v.clone(),
                });
            } else {
                out.push(Change::Deferred {
                    what: format!("sysctl {k} = {v} at runtime"),
                    why: "this host keeps /proc/sys read-only (a container); the file in /etc/sysctl.d applies it where the kernel allows".into(),
                });
            }
        }
    }
    // Units.
    let unit_file_changed = out.iter().any(|c| {
        matches!(c, Change::File { path, content_changed: true, .. } if path.starts_with("/etc/systemd/system/"))
    });
    if unit_file_changed && facts.has_systemd {
        out.push(Change::Unit {
            unit: "systemd".into(),
            action: UnitAction::DaemonReload,
            reason: "a unit file changed".into(),
        });
    }
    for u in &desired.units {
        let fact = facts.units.get(&u.name);
        let enabled = fact.map(|f| f.enabled.as_str()).unwrap_or("not-found");
        let active = fact.map(|f| f.active.as_str()).unwrap_or("inactive");
        let is_enabled = matches!(enabled, "enabled" | "enabled-runtime" | "static" | "alias");
        if u.enabled && !is_enabled {
            out.push(Change::Unit {
                unit: u.name.clone(),
                action: UnitAction::Enable,
                reason: format!("is {enabled}"),
            });
        } else if !u.enabled && enabled == "enabled" {
            out.push(Change::Unit {
                unit: u.name.clone(),
                action: UnitAction::Disable,
                reason: "is enabled".into(),
            });
        }
        let running = matches!(active, "active" | "activating" | "reloading");
        let because: Vec<&str> = notified
            .iter()
            .filter(|(n, _)| n == &u.name)
            .map(|(_, p)| p.as_str())
            .collect();
        match u.state {
            UnitState::Started if !running => out.push(Change::Unit {
                unit: u.name.clone(),
                action: UnitAction::Start,
                reason: format!("is {active}"),
            }),
            UnitState::Started => {
                let pending = facts.pending.contains(&u.name);
                if (!because.is_empty() || pending) && u.on_change != OnChange::None {
                    let reason = if !because.is_empty() {
                        format!("{} changed", because.join(", "))
                    } else {
                        "a change from an interrupted run is not yet applied".into()
                    };
                    out.push(Change::Unit {
                        unit: u.name.clone(),
                        action: if u.on_change == OnChange::Reload {
                            UnitAction::Reload
                        } else {
                            UnitAction::Restart
                        },
                        reason,
                    });
                }
            }
            UnitState::Stopped if running => out.push(Change::Unit {
                unit: u.name.clone(),
                action: UnitAction::Stop,
                reason: "should be stopped".into(),
            }),
            UnitState::Stopped => {}
        }
    }
    out
}

fn norm_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A diff of a secret file: lines that contain a known secret are redacted; if the file has
/// secrets we do not know (e.g. a key), only sizes are shown.
fn redacted_secret_diff(path: &str, old: Option<&[u8]>, new: &[u8], secrets: &[String]) -> String {
    let looks_like_key = |b: &[u8]| String::from_utf8_lossy(b).contains("PRIVATE KEY");
    if looks_like_key(new) || old.map(looks_like_key).unwrap_or(false) {
        return format!(
            "secret content: {} -> {} bytes (not shown)\n",
            old.map(|o| o.len()).unwrap_or(0),
            new.len()
        );
    }
    redact_secret_keys(&unified_diff(path, old, new, secrets))
}

/// Pure: in a diff of a secret file, the value of every line whose key looks like a secret
/// (`password: ...`, `PGPASSWORD=...`) is replaced, on both sides: a value that pgdeploy no
/// longer knows (an old password still on the host) is never shown either.
pub fn redact_secret_keys(diff: &str) -> String {
    diff.split_inclusive('\n')
        .map(|line| {
            if line.starts_with("---") || line.starts_with("+++") || line.starts_with("@@") {
                return line.to_string();
            }
            let body = line.get(1..).unwrap_or("");
            let Some(sep) = body.find([':', '=']) else {
                return line.to_string();
            };
            let key = body[..sep]
                .trim()
                .trim_start_matches("- ")
                .trim_matches('"');
            if !crate::inventory::secret_like(key) || body[sep + 1..].trim().is_empty() {
                return line.to_string();
            }
            let nl = if line.ends_with('\n') { "\n" } else { "" };
            let rest = &body[sep + 1..];
            let ws = &rest[..rest.len() - rest.trim_start().len()];
            format!("{}{}{ws}<redacted>{nl}", &line[..1], &body[..=sep])
        })
        .collect()
}

/// Plan packages: install/upgrade to the desired version and hold.
pub fn plan_packages(desired: &[DesiredPackage], facts: &HostFacts) -> Vec<Change> {
    let mut out = Vec::new();
    for p in desired {
        let cur = facts.packages.get(&p.name);
        let needs = match (&p.version, cur) {
            (_, None) => true,
            (Some(v), Some(c)) => v != c,
            (None, Some(_)) => false,
        };
        if needs {
            out.push(Change::Package {
                name: p.name.clone(),
                from: cur.cloned(),
                to: p.version.clone().unwrap_or_else(|| "(candidate)".into()),
            });
        }
        let held = facts.held.contains(&p.name);
        if p.hold != held {
            out.push(Change::Hold {
                name: p.name.clone(),
                hold: p.hold,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::facts::{PathFact, UnitFact};

    fn file(path: &str, content: &str, notify: &[&str]) -> DesiredFile {
        DesiredFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            secret: false,
            notify: notify.iter().map(|s| s.to_string()).collect(),
            validate: None,
            before_packages: false,
            summary: None,
            pair: None,
        }
    }

    fn fact_for(content: &str) -> PathFact {
        PathFact {
            kind: PathKind::File,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            sha256: Some(sha256_hex(content.as_bytes())),
            content: Some(content.as_bytes().to_vec()),
        }
    }

    fn unit(name: &str) -> DesiredUnit {
        DesiredUnit {
            name: name.into(),
            enabled: true,
            state: UnitState::Started,
            on_change: OnChange::Restart,
        }
    }

    fn running() -> UnitFact {
        UnitFact {
            enabled: "enabled".into(),
            active: "active".into(),
        }
    }

    #[test]
    fn converged_host_has_empty_plan() {
        let d = Desired {
            files: vec![file("/etc/x.conf", "a=1\n", &["x.service"])],
            units: vec![unit("x.service")],
            sysctls: vec![("net.ipv4.tcp_keepalive_time".into(), "60".into())],
            ..Default::default()
        };
        let mut f = HostFacts {
            has_systemd: true,
            ..Default::default()
        };
        f.paths.insert("/etc/x.conf".into(), fact_for("a=1\n"));
        f.units.insert("x.service".into(), running());
        f.sysctls
            .insert("net.ipv4.tcp_keepalive_time".into(), "60".into());
        assert_eq!(plan_resources(&d, &f, &[]), vec![]);
        // A read-only /proc/sys turns a differing value into a deferred note, not a change.
        f.sysctls
            .insert("net.ipv4.tcp_keepalive_time".into(), "7200".into());
        let p = plan_resources(&d, &f, &[]);
        assert!(p.len() == 1 && p[0].is_deferred(), "{p:?}");
        f.sysctl_writable
            .insert("net.ipv4.tcp_keepalive_time".into());
        let p = plan_resources(&d, &f, &[]);
        assert!(
            matches!(&p[0], Change::Sysctl { to, .. } if to == "60"),
            "{p:?}"
        );
    }

    #[test]
    fn a_generated_file_shows_its_summary_not_its_content() {
        let mut index = file(
            "/var/lib/pgdeploy/repo/Packages",
            &"Package: x\n".repeat(500),
            &[],
        );
        index.summary = Some("repository index (500 packages, 1.0 MB)".into());
        let d = Desired {
            files: vec![index],
            ..Default::default()
        };
        let plan = plan_resources(&d, &HostFacts::default(), &[]);
        match &plan[0] {
            Change::File { diff, .. } => assert_eq!(
                diff,
                "repository index (500 packages, 1.0 MB) (generated; content not shown)\n"
            ),
            c => panic!("unexpected {c:?}"),
        }
    }

    #[test]
    fn changed_file_restarts_its_unit_with_reason() {
        let d = Desired {
            files: vec![file("/etc/x.conf", "a=2\n", &["x.service"])],
            units: vec![unit("x.service")],
            ..Default::default()
        };
        let mut f = HostFacts {
            has_systemd: true,
            ..Default::default()
        };
        f.paths.insert("/etc/x.conf".into(), fact_for("a=1\n"));
        f.units.insert("x.service".into(), running());
        let plan = plan_resources(&d, &f, &[]);
        assert_eq!(plan.len(), 2, "{plan:#?}");
        match &plan[0] {
            Change::File { diff, .. } => {
                assert!(diff.contains("-a=1"));
                assert!(diff.contains("+a=2"));
            }
            c => panic!("unexpected {c:?}"),
        }
        assert_eq!(
            plan[1],
            Change::Unit {
                unit: "x.service".into(),
                action: UnitAction::Restart,
                reason: "/etc/x.conf changed".into()
            }
        );
    }

    #[test]
    fn mode_only_change_does_not_restart() {
        let d = Desired {
            files: vec![file("/etc/x.conf", "a=1\n", &["x.service"])],
            units: vec![unit("x.service")],
            ..Default::default()
        };
        let mut f = HostFacts {
            has_systemd: true,
            ..Default::default()
        };
        let mut pf = fact_for("a=1\n");
        pf.mode = 0o600;
        f.paths.insert("/etc/x.conf".into(), pf);
        f.units.insert("x.service".into(), running());
        let plan = plan_resources(&d, &f, &[]);
        assert_eq!(plan.len(), 1);
        assert!(
            matches!(&plan[0], Change::File { content_changed: false, notify, .. } if notify.is_empty())
        );
    }

    #[test]
    fn stopped_unit_is_started_not_restarted() {
        let d = Desired {
            files: vec![file(
                "/etc/systemd/system/x.service",
                "[Unit]\n",
                &["x.service"],
            )],
            units: vec![unit("x.service")],
            ..Default::default()
        };
        let f = HostFacts {
            has_systemd: true,
            ..Default::default()
        };
        let plan = plan_resources(&d, &f, &[]);
        let actions: Vec<_> = plan
            .iter()
            .filter_map(|c| match c {
                Change::Unit { action, .. } => Some(*action),
                _ => None,
            })
            .collect();
        assert_eq!(
            actions,
            vec![
                UnitAction::DaemonReload,
                UnitAction::Enable,
                UnitAction::Start
            ]
        );
    }

    #[test]
    fn pending_marker_from_interrupted_run_restarts() {
        let d = Desired {
            units: vec![unit("x.service")],
            ..Default::default()
        };
        let mut f = HostFacts {
            has_systemd: true,
            ..Default::default()
        };
        f.units.insert("x.service".into(), running());
        f.pending.insert("x.service".into());
        let plan = plan_resources(&d, &f, &[]);
        assert!(matches!(
            &plan[0],
            Change::Unit {
                action: UnitAction::Restart,
                ..
            }
        ));
    }

    #[test]
    fn packages_install_upgrade_and_hold() {
        let want = vec![
            DesiredPackage {
                name: "postgresql-15".into(),
                version: Some("15.20-0+deb12u1".into()),
                hold: true,
            },
            DesiredPackage {
                name: "haproxy".into(),
                version: None,
                hold: false,
            },
        ];
        let mut f = HostFacts::default();
        f.packages
            .insert("postgresql-15".into(), "15.18-0+deb12u1".into());
        f.held.insert("postgresql-15".into());
        let plan = plan_packages(&want, &f);
        assert_eq!(
            plan,
            vec![
                Change::Package {
                    name: "postgresql-15".into(),
                    from: Some("15.18-0+deb12u1".into()),
                    to: "15.20-0+deb12u1".into()
                },
                Change::Package {
                    name: "haproxy".into(),
                    from: None,
                    to: "(candidate)".into()
                },
            ]
        );
    }

    #[test]
    fn secret_files_never_show_values_of_secret_keys_old_or_new() {
        let old = b"superuser:\n  username: postgres\n  password: old-one-nobody-knows\nttl: 20\n";
        let new = b"superuser:\n  username: postgres\n  password: the-new-one\nttl: 30\n";
        let d = redacted_secret_diff("/etc/patroni/config.yml", Some(old), new, &[]);
        assert!(
            !d.contains("old-one-nobody-knows") && !d.contains("the-new-one"),
            "{d}"
        );
        assert!(d.contains("-  password: <redacted>\n"), "{d}");
        assert!(d.contains("+  password: <redacted>\n"), "{d}");
        // Other settings keep their diff.
        assert!(d.contains("-ttl: 20\n") && d.contains("+ttl: 30\n"), "{d}");
        assert_eq!(
            redact_secret_keys(" PGPASSWORD=x\n"),
            " PGPASSWORD=<redacted>\n"
        );
    }

    /// What `check --format json` and the journal get of a secret file (its JSON and its
    /// summary) shows neither the old nor the new value, only which keys changed.
    #[test]
    fn secret_files_in_json_and_journal_show_no_value() {
        let mut f = file(
            "/etc/patroni/config.yml",
            "password: the-new-one\nttl: 30\n",
            &[],
        );
        f.secret = true;
        let d = Desired {
            files: vec![f],
            ..Default::default()
        };
        let mut facts = HostFacts::default();
        facts.paths.insert(
            "/etc/patroni/config.yml".into(),
            fact_for("password: old-one-nobody-knows\nttl: 20\n"),
        );
        let plan = plan_resources(&d, &facts, &["the-new-one".to_string()]);
        let json = serde_json::to_string(&plan).unwrap();
        let summary = plan[0].summary();
        for text in [&json, &summary] {
            assert!(
                !text.contains("old-one-nobody-knows") && !text.contains("the-new-one"),
                "{text}"
            );
        }
        assert!(
            json.contains("password: <redacted>") && json.contains("+ttl: 30"),
            "{json}"
        );
    }

    #[test]
    fn secret_key_files_never_show_content() {
        let mut k = file("/etc/k.key", "-----BEGIN PRIVATE KEY-----\nabc\n", &[]);
        k.secret = true;
        let d = Desired {
            files: vec![k],
            ..Default::default()
        };
        let plan = plan_resources(&d, &HostFacts::default(), &[]);
        match &plan[0] {
            Change::File { diff, .. } => {
                assert!(!diff.contains("abc") && diff.contains("not shown"))
            }
            c => panic!("{c:?}"),
        }
    }
}
