//! Integration tests: inventory.
//!
//! - every file in tests/inventories/bad/ must fail with exactly the report in its `.expected`
//!   file (run with `UPDATE_SNAPSHOTS=1` to rewrite them after an intended change);
//! - the shipped inventories and tests/inventories/good/ load cleanly;
//! - warnings, colocation and normalization behave as documented.

use std::path::{Path, PathBuf};

use pgdeploy::inventory::{self, Group, InventoryError};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (relative to the crate) ending in `ext`, sorted.
fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// Load `rel` (relative to the crate) with its relative name in messages, as a user running
/// pgdeploy from the crate directory would see it.
fn load_rel(rel: &str) -> miette::Result<(inventory::Inventory, Vec<inventory::Warning>)> {
    let abs = root().join(rel);
    let text = std::fs::read_to_string(&abs).unwrap_or_else(|e| panic!("read {rel}: {e}"));
    let base = abs.parent().unwrap_or(Path::new(".")).to_path_buf();
    inventory::load_str(&text, rel, &base)
}

fn rel_name(p: &Path) -> String {
    p.strip_prefix(root())
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

#[test]
fn bad_inventories_match_snapshots() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    let bad = files("tests/inventories/bad", "yaml");
    assert!(bad.len() >= 30, "only {} bad inventories", bad.len());
    let mut failures = Vec::new();
    for path in &bad {
        let rel = rel_name(path);
        let expected_path = path.with_extension("expected");
        let rendered = match load_rel(&rel) {
            Ok(_) => {
                failures.push(format!("{rel}: loaded without error"));
                continue;
            }
            Err(report) => inventory::render_plain(report.as_ref()),
        };
        // Never an absolute path of this machine in a report.
        let here = root().to_string_lossy().into_owned();
        if rendered.contains(&here) {
            failures.push(format!(
                "{rel}: the report contains the absolute path {here}"
            ));
        }
        if update {
            std::fs::write(&expected_path, &rendered)
                .unwrap_or_else(|e| panic!("write {}: {e}", expected_path.display()));
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == rendered => {}
            Ok(expected) => {
                let diff = similar::TextDiff::from_lines(&expected, &rendered)
                    .unified_diff()
                    .header("expected", "actual")
                    .to_string();
                failures.push(format!("{rel}: report differs from its snapshot\n{diff}"));
            }
            Err(_) => failures.push(format!(
                "{rel}: no snapshot {}; run with UPDATE_SNAPSHOTS=1 to write it\n{rendered}",
                rel_name(&expected_path)
            )),
        }
    }
    // No stale snapshots.
    for exp in files("tests/inventories/bad", "expected") {
        if !exp.with_extension("yaml").exists() {
            failures.push(format!("{}: snapshot without inventory", rel_name(&exp)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shipped_inventories_load_cleanly() {
    for rel in ["inventory/production.yaml", "inventory/poc.yaml"] {
        let (inv, warnings) = match load_rel(rel) {
            Ok(x) => x,
            Err(r) => panic!(
                "{rel} does not load:\n{}",
                inventory::render_plain(r.as_ref())
            ),
        };
        // The PoC puts its load balancer on a member: the one warning is that the superuser's
        // administrative path is open there.
        let expected = usize::from(rel.ends_with("poc.yaml"));
        assert_eq!(
            warnings.len(),
            expected,
            "{rel}: unexpected warnings {warnings:?}"
        );
        assert!(warnings
            .iter()
            .all(|w| w.0.contains("HAProxy on a Patroni member's address")));
        assert!(!inv.cluster.name.is_empty());
        // The commented roles and databases load as written once uncommented.
        let text = std::fs::read_to_string(root().join(rel)).unwrap();
        let start = text.find("# users:").expect("a commented users block");
        let end = start + text[start..].find("\n\n").unwrap();
        let block: String = text[start..end]
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let full = text.replacen(&text[start..end], &block, 1);
        let (inv, _) =
            inventory::load_str(&full, rel, &root().join("inventory")).unwrap_or_else(|r| {
                panic!("{rel} with users:\n{}", inventory::render_plain(r.as_ref()))
            });
        assert_eq!(inv.users.len(), 2);
        assert_eq!(inv.databases[0].readers, ["app_ro"]);
    }
    // Also through `load` with a real path.
    let (inv, _) = inventory::load(&root().join("inventory/production.yaml"))
        .unwrap_or_else(|r| panic!("{}", inventory::render_plain(r.as_ref())));
    assert_eq!(inv.groups.etcd.len(), 3);
    assert_eq!(inv.groups.patroni.len(), 3);
    assert_eq!(inv.groups.haproxy.len(), 3);
    assert_eq!(inv.groups.backup.len(), 1);
    assert_eq!(inv.hosts().len(), 10);
    let dns = inv.dns.as_ref().expect("production has a dns section");
    assert_eq!(dns.provider, "rfc2136");
    let tsig = dns.tsig.as_ref().expect("production signs updates");
    assert!(tsig.secret_file.is_some() && tsig.secret_env.is_none());
    assert_eq!(inv.packages.source, inventory::PackageSource::Bundle);
    assert_eq!(inv.path, root().join("inventory/production.yaml"));
    assert_eq!(inv.base_dir, root().join("inventory"));
    assert_eq!(
        inv.resolve_path("secrets/pgdeploy.tsig"),
        root().join("inventory/secrets/pgdeploy.tsig")
    );
    // The shipped Patroni timings are the documented defaults and obey Patroni's rule.
    assert_eq!(
        (
            inv.patroni.ttl,
            inv.patroni.loop_wait,
            inv.patroni.retry_timeout
        ),
        (20, 2, 3)
    );
    assert!(inventory::patroni_timing_ok(20, 2, 3));
    // Debian 13 with its own PostgreSQL.
    assert_eq!(inv.platform, pgdeploy::platform::Platform::Debian13);
    assert_eq!(inv.postgres.version, "17.12");
}

#[test]
fn good_inventories_load() {
    let good = files("tests/inventories/good", "yaml");
    assert!(!good.is_empty());
    for path in good {
        let rel = rel_name(&path);
        if let Err(r) = load_rel(&rel) {
            panic!(
                "{rel} does not load:\n{}",
                inventory::render_plain(r.as_ref())
            );
        }
    }
}

#[test]
fn poc_colocation_merges_hosts() {
    let (inv, _) = load_rel("inventory/poc.yaml").expect("poc loads");
    let hosts = inv.hosts();
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["pg1", "pg2", "pg3"]);
    assert_eq!(
        hosts[0].groups,
        [Group::Etcd, Group::Patroni, Group::Haproxy]
    );
    assert_eq!(hosts[0].address, "10.20.0.21");
    assert_eq!(hosts[1].groups, [Group::Patroni]);
    assert_eq!(hosts[2].groups, [Group::Patroni]);
    let etcd: Vec<String> = inv
        .group_hosts(Group::Etcd)
        .into_iter()
        .map(|h| h.name)
        .collect();
    let haproxy: Vec<String> = inv
        .group_hosts(Group::Haproxy)
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(etcd, ["pg1"]);
    assert_eq!(haproxy, ["pg1"]);
    assert_eq!(inv.group_hosts(Group::Patroni).len(), 3);
    assert!(inv.dns.is_none());
}

#[test]
fn colocated_host_keeps_its_settings_across_groups() {
    let (inv, warnings) =
        load_rel("tests/inventories/good/colocated-ssh-and-params.yaml").expect("loads");
    // The one warning: load balancers on members' addresses (the superuser's path).
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .0
            .contains("HAProxy on a Patroni member's address (db1, db2)"),
        "{warnings:?}"
    );
    let hosts = inv.hosts();
    let db1 = hosts.iter().find(|h| h.name == "db1").expect("db1");
    assert_eq!(db1.groups, [Group::Etcd, Group::Patroni, Group::Haproxy]);
    assert_eq!(
        db1.ssh.port, 2222,
        "ssh override of the first entry applies"
    );
    assert_eq!(db1.ssh.user, "admin");
    assert_eq!(db1.ssh.become_, inventory::Become::Sudo);
    assert_eq!(
        db1.postgres_parameters
            .get("work_mem")
            .map(|v| v.to_string())
            .as_deref(),
        Some("32MB")
    );
    let db2 = hosts.iter().find(|h| h.name == "db2").expect("db2");
    assert_eq!(db2.ssh.port, 22);
    assert_eq!(db2.address6.as_deref(), Some("fd00::22"));
}

#[test]
fn even_etcd_count_warns() {
    let (_, warnings) = load_rel("tests/inventories/good/even-etcd.yaml").expect("loads");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0].0;
    assert!(
        w.starts_with("tests/inventories/good/even-etcd.yaml:"),
        "warning names the file and place: {w}"
    );
    assert!(w.contains("4 etcd hosts") && w.contains("even"), "{w}");
    assert!(w.contains("quorum is 3 of 4"), "{w}");
}

#[test]
fn dns_names_are_normalized() {
    let (inv, warnings) =
        load_rel("tests/inventories/good/dns-relative-names.yaml").expect("loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let dns = inv.dns.expect("dns");
    assert_eq!(dns.name, "pg.db.example.com.");
    assert_eq!(dns.zone, "db.example.com.");
    assert_eq!(dns.ttl, 30, "default ttl");
    let tsig = dns.tsig.expect("tsig");
    assert_eq!(tsig.algorithm, "hmac-sha256", "default algorithm");
    assert_eq!(tsig.secret_env.as_deref(), Some("PGDEPLOY_TSIG_SECRET"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let report = load_rel("tests/inventories/bad/34-many-problems.yaml").expect_err("fails");
    let err = report
        .downcast_ref::<InventoryError>()
        .expect("semantic problems come as an InventoryError");
    assert_eq!(err.file(), "tests/inventories/bad/34-many-problems.yaml");
    let messages: Vec<&str> = err.problems().iter().map(|p| p.message.as_str()).collect();
    assert!(messages.len() >= 6, "{messages:#?}");
    for needle in [
        "cluster name",
        "version",
        "`port`",
        "patroni.ttl",
        "no haproxy host",
        "two hosts",
    ] {
        assert!(
            messages.iter().any(|m| m.contains(needle)),
            "no problem mentions {needle:?}: {messages:#?}"
        );
    }
    // In file order, each with a place in the file.
    let offsets: Vec<usize> = err.problems().iter().map(|p| p.labels[0].0).collect();
    let mut sorted = offsets.clone();
    sorted.sort();
    assert_eq!(offsets, sorted);
}

#[test]
fn inline_secret_is_never_echoed() {
    let report = load_rel("tests/inventories/bad/27-tsig-inline-secret.yaml").expect_err("fails");
    let text = inventory::render_plain(report.as_ref());
    assert!(!text.contains("c2VjcmV0LW5vdC10by1iZS1wcmludGVk"), "{text}");
    assert!(
        text.contains("secret_file") && text.contains("secret_env"),
        "{text}"
    );
}

#[test]
fn rendering_is_plain_and_deterministic() {
    let report = load_rel("tests/inventories/bad/02-unknown-key-typo.yaml").expect_err("fails");
    let a = inventory::render_plain(report.as_ref());
    let b = inventory::render_plain(report.as_ref());
    assert_eq!(a, b);
    assert!(!a.contains('\u{1b}'), "no escape sequences: {a:?}");
    assert!(a.contains("did you mean `restapi_port`?"), "{a}");
    assert!(
        a.contains("[tests/inventories/bad/02-unknown-key-typo.yaml:"),
        "{a}"
    );
    assert!(
        a.lines()
            .all(|l| l.chars().count() <= 100 || l.contains("╰──")),
        "{a}"
    );
}

#[test]
fn load_reports_unreadable_files() {
    let missing = root().join("tests/inventories/does-not-exist.yaml");
    let report = inventory::load(&missing).expect_err("missing file");
    let text = inventory::render_plain(report.as_ref());
    assert!(
        text.contains("cannot read inventory") && text.contains("no such file"),
        "{text}"
    );
}

#[test]
fn unsigned_dns_updates_warn() {
    let text = "cluster: {name: w}\n\
                dns: {name: pg.example.com., zone: example.com., server: 192.0.2.53}\n\
                groups:\n  etcd: [{name: a, address: 192.0.2.1}]\n  \
                patroni: [{name: a, address: 192.0.2.1}, {name: b, address: 192.0.2.2}]\n  \
                haproxy: [{name: a, address: 192.0.2.1}]\n";
    let (inv, warnings) = inventory::load_str(text, "inline.yaml", Path::new("."))
        .unwrap_or_else(|r| panic!("{}", inventory::render_plain(r.as_ref())));
    assert_eq!(inv.dns.map(|d| d.provider).as_deref(), Some("rfc2136"));
    let warnings: Vec<_> = warnings
        .into_iter()
        .filter(|w| !w.0.contains("HAProxy on a Patroni member's address"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].0.starts_with("inline.yaml:2:"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].0.contains("unsigned"), "{}", warnings[0]);
}

#[test]
fn yaml_errors_point_into_the_file() {
    let report = inventory::load_str("cluster: [\n", "broken.yaml", Path::new("."))
        .expect_err("broken YAML");
    let err = report
        .downcast_ref::<InventoryError>()
        .expect("InventoryError");
    assert_eq!(err.problems().len(), 1);
    let text = inventory::render_plain(report.as_ref());
    assert!(text.contains("[broken.yaml:"), "{text}");
}

#[test]
fn truncated_and_mangled_inventories_never_panic() {
    // Every prefix of the shipped inventory (at a stride), and a few byte-level manglings, must
    // give either an inventory or a report that renders; never a panic.
    let text = std::fs::read_to_string(root().join("inventory/production.yaml")).expect("read");
    let cuts: Vec<usize> = (0..text.len())
        .step_by(29)
        .filter(|i| text.is_char_boundary(*i))
        .collect();
    let mut failures = 0;
    for cut in &cuts {
        let t = &text[..*cut];
        let mangled = [
            t.to_string(),
            format!("{t}\t: ]\n"),
            format!("{t}\n  - é: [\n"),
            t.replacen(": ", ":\u{00a0}", 1),
        ];
        for m in &mangled {
            if let Err(r) = inventory::load_str(m, "cut.yaml", Path::new(".")) {
                failures += 1;
                let rendered = inventory::render_plain(r.as_ref());
                assert!(!rendered.is_empty());
            }
        }
    }
    assert!(failures > cuts.len(), "most mangled inventories must fail");
}
