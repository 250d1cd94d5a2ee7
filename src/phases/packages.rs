//! Packages: PostgreSQL at the pinned minor, Patroni, etcd, HAProxy, held with apt-mark.
//!
//! With the `bundle` source, the local repository built by `pgdeploy bundle` is pushed to each
//! host (only the files it lacks, streamed) and apt installs from that repository alone. With
//! `apt`, hosts install from their own configured repositories.

use crate::bundle::Manifest;
use crate::engine::change::Change;
use crate::engine::exec::{apply_changes, install_packages};
use crate::engine::facts::{parse_probe, probe_command};
use crate::engine::phase::{desired_for_host, hosts_for_roles, probe, HostPlan, Phase, PhasePlan};
use crate::engine::plan::{plan_packages, plan_resources, Desired, DesiredFile};
use crate::engine::{bounded, Ctx};
use crate::inventory::PackageSource;
use crate::shell::sh_quote;
use crate::ssh::UploadFile;
use async_trait::async_trait;
use miette::{miette, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub use super::{REPO_DIR, REPO_LIST};

pub struct Packages {
    pub roles: Vec<String>,
}

/// apt options for the inventory's package source: with the bundle, apt sees the bundle (the
/// role data's source list) and nothing else.
pub fn apt_source_opts(source: PackageSource) -> String {
    match source {
        PackageSource::Bundle => format!(
            "-o Dir::Etc::sourcelist={REPO_LIST} -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
        ),
        PackageSource::Apt => String::new(),
    }
}

/// Pure: the `.deb` files of the bundle that installing `roots` may need: their dependency
/// closure in the bundle's `Packages` index (Depends and Pre-Depends; every alternative and
/// every provider of a virtual package counts, so whatever apt picks is there). A package the
/// host already has at the bundle's version is neither sent nor followed.
pub fn needed_debs(
    index: &str,
    roots: &[String],
    installed: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    struct Entry {
        file: String,
        deps: Vec<String>,
        installed: bool,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let dep_names = |v: &str| -> Vec<String> {
        v.split([',', '|'])
            .filter_map(|d| {
                let name = d.trim().split([' ', '(', ':']).next()?.trim();
                (!name.is_empty()).then(|| name.to_string())
            })
            .collect()
    };
    for stanza in index.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
        };
        let (Some(name), Some(file)) = (field("Package"), field("Filename")) else {
            continue;
        };
        let mut deps = dep_names(field("Depends").unwrap_or(""));
        deps.extend(dep_names(field("Pre-Depends").unwrap_or("")));
        let i = entries.len();
        entries.push(Entry {
            file: file.rsplit('/').next().unwrap_or(file).to_string(),
            deps,
            installed: field("Version")
                .is_some_and(|v| installed.get(name).map(String::as_str) == Some(v)),
        });
        by_name.entry(name.to_string()).or_default().push(i);
        for p in dep_names(field("Provides").unwrap_or("")) {
            by_name.entry(p).or_default().push(i);
        }
    }
    let mut seen = vec![false; entries.len()];
    let mut todo: Vec<String> = roots.to_vec();
    let mut out = BTreeSet::new();
    while let Some(n) = todo.pop() {
        for &i in by_name.get(&n).into_iter().flatten() {
            if !seen[i] && !entries[i].installed {
                seen[i] = true;
                out.insert(entries[i].file.clone());
                todo.extend(entries[i].deps.iter().cloned());
            }
        }
    }
    out
}

/// Pure: which bundle files a host lacks, given `name size` lines of what it has.
pub fn missing_files(manifest: &Manifest, have: &str) -> Vec<(String, u64)> {
    let present: BTreeMap<&str, u64> = have
        .lines()
        .filter_map(|l| {
            let (n, s) = l.rsplit_once(' ')?;
            Some((n.rsplit('/').next()?, s.trim().parse().ok()?))
        })
        .collect();
    manifest
        .debs
        .iter()
        .filter(|f| present.get(f.name.as_str()) != Some(&f.size))
        .map(|f| (f.name.clone(), f.size))
        .collect()
}

/// The bundle's `names` with the size and SHA-256 its manifest gives them.
fn upload_files(manifest: Option<&Manifest>, names: &[String]) -> Result<Vec<UploadFile>> {
    let m = manifest.ok_or_else(|| miette!("packages to upload, but no bundle manifest"))?;
    names
        .iter()
        .map(|n| {
            let f = m
                .debs
                .iter()
                .chain(&m.index)
                .find(|f| &f.name == n)
                .ok_or_else(|| miette!("{n} is not in the bundle's manifest"))?;
            Ok(UploadFile {
                name: f.name.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
            })
        })
        .collect()
}

impl Packages {
    /// Whether the phase's roles apply to `host`.
    fn applies(&self, ctx: &Ctx, host: &str) -> bool {
        hosts_for_roles(ctx, &self.roles).is_ok_and(|hs| hs.iter().any(|h| h == host))
    }

    fn bundle_dir(ctx: &Ctx) -> PathBuf {
        ctx.inv.resolve_path(&ctx.inv.packages.bundle_dir)
    }

    fn manifest(ctx: &Ctx) -> Result<Option<Manifest>> {
        if ctx.inv.packages.source != PackageSource::Bundle {
            return Ok(None);
        }
        let dir = Self::bundle_dir(ctx);
        Manifest::load(&dir).map(Some).map_err(|e| {
            miette!(
                help = format!("build it first: pgdeploy bundle {}", ctx.inv.path.display()),
                "no usable package bundle in {}: {e}",
                dir.display()
            )
        })
    }
}

/// Resolve `postgres.version` to the Debian version (from the bundle's manifest, or the
/// first Patroni host's apt sources) and make it visible to templates.
pub async fn resolve_postgres_version(ctx: &Ctx) -> Result<()> {
    let want = ctx.inv.postgres.version.clone();
    let major = want.split('.').next().unwrap_or("").to_string();
    match ctx.inv.packages.source {
        PackageSource::Bundle => {
            let dir = Packages::bundle_dir(ctx);
            let m = Packages::manifest(ctx)?.expect("bundle source has a manifest");
            let Some(rel) = m.postgres.iter().find(|p| p.version == want) else {
                let have: Vec<&str> = m.postgres.iter().map(|p| p.version.as_str()).collect();
                return Err(miette!(
                    help = format!(
                        "rebuild it with that version: pgdeploy bundle {} (add --also-postgres to keep several)",
                        ctx.inv.path.display()
                    ),
                    "the bundle in {} has PostgreSQL {} but {want} is asked for",
                    dir.display(),
                    have.join(", ")
                ));
            };
            ctx.set_var(
                &["postgres", "debian_version"],
                rel.debian_version.clone().into(),
            );
        }
        PackageSource::Apt => {
            let Some(first) = ctx
                .inv
                .group_hosts(crate::inventory::Group::Patroni)
                .into_iter()
                .next()
            else {
                return Ok(());
            };
            let s = ctx.session(&first.name)?;
            let pkg = format!("postgresql-{major}");
            let out = s
                .exec(&format!("apt-cache madison {pkg} 2>/dev/null"), None)
                .await?;
            let v = crate::bundle::match_version(&out.stdout_str(), &pkg, &want).map_err(|e| {
                miette!(
                    help = "run `apt-get update` on the hosts, add a repository that has it, or choose an available minor",
                    "{}: {e}",
                    first.name
                )
            })?;
            ctx.set_var(&["postgres", "debian_version"], v.into());
        }
    }
    Ok(())
}

/// The bundle's files already on the host (what dpkg has installed is in the probe's facts:
/// every installed package).
fn repo_command() -> String {
    format!(
        "echo '@REPO'; find {REPO_DIR} -maxdepth 1 -name '*.deb' -printf '%f %s\\n' 2>/dev/null || true\n"
    )
}

/// The host's one packages probe of its own: the files and directories that come before
/// packages, the packages, then [`repo_command`].
fn probe_cmd(req: &crate::engine::facts::ProbeRequest) -> String {
    probe_command(req) + &repo_command()
}

impl Packages {
    /// What the host must have before packages are installed (`content`: read the bundle's
    /// index too; a probe needs only its path).
    fn desired_before(
        &self,
        ctx: &Ctx,
        host: &str,
        manifest: &Option<Manifest>,
        bundle_dir: &std::path::Path,
        content: bool,
    ) -> Result<Desired> {
        let full = desired_for_host(ctx, &self.roles, host)?;
        let mut desired = Desired {
            dirs: full
                .dirs
                .into_iter()
                .filter(|d| d.before_packages)
                .collect(),
            files: full
                .files
                .into_iter()
                .filter(|f| f.before_packages)
                .collect(),
            packages: full.packages,
            ..Default::default()
        };
        if let Some(m) = manifest {
            desired.files.extend(extra_files(m, bundle_dir, content)?);
        }
        Ok(desired)
    }
}

fn extra_files(
    manifest: &Manifest,
    bundle_dir: &std::path::Path,
    content: bool,
) -> Result<Vec<DesiredFile>> {
    let mut v = Vec::new();
    for f in &manifest.index {
        if f.name != "Packages" {
            continue;
        }
        let p = bundle_dir.join(&f.name);
        let content = if content {
            std::fs::read(&p).map_err(|e| miette!("cannot read {}: {e}", p.display()))?
        } else {
            Vec::new()
        };
        v.push(DesiredFile {
            path: format!("{REPO_DIR}/Packages"),
            content,
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            secret: false,
            notify: vec![],
            validate: None,
            before_packages: true,
            summary: Some(format!(
                "repository index ({} packages, {:.1} MB)",
                manifest.debs.len(),
                manifest.debs.iter().map(|d| d.size).sum::<u64>() as f64 / 1e6
            )),
            pair: None,
        });
    }
    Ok(v)
}

#[async_trait]
impl Phase for Packages {
    fn name(&self) -> &str {
        "packages"
    }

    // Planned with the other phases, the files and installed packages come from the host's
    // shared probe (with the bundle's index added to it), and only the repository's listing
    // rides along.
    fn probe_extras(&self, ctx: &Ctx, host: &str) -> Vec<(String, String)> {
        if self.applies(ctx, host) {
            vec![("packages".into(), repo_command())]
        } else {
            Vec::new()
        }
    }

    fn probe_paths(&self, ctx: &Ctx, host: &str) -> Vec<String> {
        match Self::manifest(ctx) {
            Ok(Some(m)) if self.applies(ctx, host) => {
                extra_files(&m, &Self::bundle_dir(ctx), false)
                    .map(|fs| fs.into_iter().map(|f| f.path).collect())
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let hosts = hosts_for_roles(ctx, &self.roles)?;
        let manifest = Self::manifest(ctx)?;
        let manifest = &manifest;
        let bundle_dir = Self::bundle_dir(ctx);
        let bundle_dir = &bundle_dir;
        // The bundle's index: each host gets only the files its own packages may need.
        let index = match manifest {
            Some(_) => {
                let p = bundle_dir.join("Packages");
                Some(std::fs::read_to_string(&p).map_err(|e| {
                    miette!(
                        help = "rebuild it with `pgdeploy bundle`",
                        "the bundle's index {} cannot be read: {e}",
                        p.display()
                    )
                })?)
            }
            None => None,
        };
        let index = &index;
        let mut futs = Vec::new();
        for h in hosts {
            futs.push(async move {
                ctx.observe(&h, "probing packages");
                let desired = self.desired_before(ctx, &h, manifest, bundle_dir, true)?;
                let s = ctx.session(&h)?;
                let req = desired.probe_request();
                // Planned with the other phases, only the repository's listing rode along in
                // the shared probe, which answers the files and installed packages.
                let shared = ctx.probed_extra(&h, "packages", &repo_command()).await;
                let text = match &shared {
                    Some((out, _)) => out.clone(),
                    None => s.exec(&probe_cmd(&req), None).await?.stdout_str(),
                };
                let (main, repo) = text.split_once("@REPO\n").unwrap_or((&text, ""));
                let mut facts = match shared {
                    Some(_) => probe(ctx, &h, &desired).await?,
                    None => parse_probe(&req, main)
                        .map_err(|e| miette!("{h}: cannot read the host's packages: {e}"))?,
                };
                // Contents for diffs of the few small files here.
                for f in desired.differing_files(&facts) {
                    if facts.paths.get(&f).is_some_and(|p| p.content.is_some()) {
                        continue;
                    }
                    if let Some(c) = s.read_file(&f).await? {
                        if let Some(pf) = facts.paths.get_mut(&f) {
                            pf.content = Some(c);
                        }
                    }
                }
                let mut changes = Vec::new();
                if let (Some(m), Some(index)) = (manifest, index) {
                    let roots: Vec<String> =
                        desired.packages.iter().map(|p| p.name.clone()).collect();
                    let needed = needed_debs(index, &roots, &facts.packages);
                    let missing: Vec<(String, u64)> = missing_files(m, repo)
                        .into_iter()
                        .filter(|(n, _)| needed.contains(n))
                        .collect();
                    if !missing.is_empty() {
                        changes.push(Change::Upload {
                            dest: REPO_DIR.into(),
                            bytes: missing.iter().map(|(_, s)| s).sum(),
                            files: missing.into_iter().map(|(n, _)| n).collect(),
                            reason: "packages of the bundle that this host's packages need, \
                                     and it lacks"
                                .into(),
                        });
                    }
                }
                changes.extend(plan_resources(&desired, &facts, &ctx.secret_values));
                for c in plan_packages(&desired.packages, &facts) {
                    match &c {
                        // An installed PostgreSQL moves member by member in the patroni phase.
                        Change::Package {
                            name,
                            from: Some(f),
                            to,
                        } if super::upgrade::is_postgres_package(name) => {
                            changes.push(Change::Deferred {
                                what: format!("{name} {f} -> {to}"),
                                why: "upgraded member by member (rolling) in the patroni phase"
                                    .into(),
                            })
                        }
                        _ => changes.push(c),
                    }
                }
                Ok::<_, miette::Report>(HostPlan { host: h, changes })
            });
        }
        Ok(PhasePlan {
            steps: Vec::new(),
            phase: "packages".into(),
            hosts: bounded(ctx.forks, futs).await?,
        })
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        let bundle_dir = Self::bundle_dir(ctx);
        let bundle_dir = &bundle_dir;
        let manifest = Self::manifest(ctx)?;
        let manifest = &manifest;
        let source = ctx.inv.packages.source;
        let mut futs = Vec::new();
        for hp in plan.hosts.iter().filter(|h| !h.changes.is_empty()) {
            futs.push(async move {
                let s = ctx.session(&hp.host)?;
                for c in &hp.changes {
                    if let Change::Upload { dest, files, .. } = c {
                        ctx.observe(&hp.host, &format!("uploading {} packages", files.len()));
                        let files = upload_files(manifest.as_ref(), files)?;
                        ctx.step(&hp.host, &c.summary(), async {
                            s.run(&format!("mkdir -p {}", sh_quote(dest))).await?;
                            s.upload_all(bundle_dir, &files, dest, 0o644).await?;
                            Ok(())
                        })
                        .await?;
                    }
                }
                // Files first (apt source, index, settings that must exist before install).
                let files: Vec<Change> = hp
                    .changes
                    .iter()
                    .filter(|c| matches!(c, Change::File { .. } | Change::Directory { .. }))
                    .cloned()
                    .collect();
                apply_changes(s, &files).await?;
                let pkgs: Vec<&Change> = hp
                    .changes
                    .iter()
                    .filter(|c| matches!(c, Change::Package { .. }))
                    .collect();
                if !pkgs.is_empty() {
                    ctx.observe(&hp.host, &format!("installing {} packages", pkgs.len()));
                    let pkgs: Vec<(&String, &String)> = pkgs
                        .iter()
                        .filter_map(|c| match c {
                            Change::Package { name, to, .. } => Some((name, to)),
                            _ => None,
                        })
                        .collect();
                    install_packages(s, &pkgs, &apt_source_opts(source), true).await?;
                }
                let holds: Vec<Change> = hp
                    .changes
                    .iter()
                    .filter(|c| matches!(c, Change::Hold { .. }))
                    .cloned()
                    .collect();
                apply_changes(s, &holds).await
            });
        }
        bounded(ctx.forks, futs).await?;
        Ok(())
    }
}

#[cfg(test)]
mod closure_tests {
    use super::needed_debs;

    const INDEX: &str = "Package: etcd-server
Version: 3.4.23-4
Depends: adduser, libc6 (>= 2.34), lsb-base | sysvinit-utils (>= 3.05-4~)
Filename: ./etcd-server_3.4.23-4_amd64.deb
Description: a store
 with a continuation line: Depends: not-a-dep

Package: adduser
Version: 3.134
Pre-Depends: passwd:any
Depends: debconf (>= 0.5) | debconf-2.0
Filename: ./adduser_3.134_all.deb

Package: passwd
Filename: ./passwd_1_amd64.deb

Package: cdebconf
Provides: debconf-2.0
Filename: ./cdebconf_1_amd64.deb

Package: libc6
Filename: ./libc6_2.36_amd64.deb

Package: sysvinit-utils
Filename: ./sysvinit-utils_3.06_amd64.deb

Package: haproxy
Depends: libc6
Filename: ./haproxy_2.6_amd64.deb
";

    #[test]
    fn closure_follows_dependencies_alternatives_and_providers() {
        let none = Default::default();
        let got = needed_debs(INDEX, &["etcd-server".to_string()], &none);
        let want = [
            "adduser_3.134_all.deb",
            "cdebconf_1_amd64.deb",
            "etcd-server_3.4.23-4_amd64.deb",
            "libc6_2.36_amd64.deb",
            "passwd_1_amd64.deb",
            "sysvinit-utils_3.06_amd64.deb",
        ];
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want);
        let got = needed_debs(INDEX, &["haproxy".to_string()], &none);
        assert_eq!(got.len(), 2);
        assert!(needed_debs(INDEX, &[], &none).is_empty());
        // What the host has at that version is neither sent nor followed.
        let has: std::collections::BTreeMap<String, String> =
            [("adduser".to_string(), "3.134".to_string())].into();
        let got = needed_debs(INDEX, &["etcd-server".to_string()], &has);
        assert!(!got.contains("adduser_3.134_all.deb") && !got.contains("passwd_1_amd64.deb"));
        assert!(got.contains("libc6_2.36_amd64.deb"));
    }
}
