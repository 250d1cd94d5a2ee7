//! Integration tests: `pgdeploy bundle` against the real Debian sources of this machine.
//!
//! Needs on the machine: apt, apt-utils (apt-ftparchive), network access to the Debian mirror
//! configured in /etc/apt, and for the install test debootstrap and systemd-container.

use pgdeploy::bundle::{
    build, filter_debian, madison_versions, private_sources, read_system_sources, BuildOptions,
    BuildSummary, BundleError, Manifest, PrivateApt, SourceChoice,
};

/// These tests build Debian 12 bundles (the release with two PostgreSQL 15 minors to pin).
const DEBIAN_CODENAME: &str = "bookworm";
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Write a minimal inventory into `dir` and load it.
fn inventory(dir: &Path, version: &str) -> pgdeploy::inventory::Inventory {
    let path = dir.join("inventory.yaml");
    std::fs::write(
        &path,
        format!(
            "cluster:\n  name: bundletest\nplatform: debian-12\npostgres:\n  version: \"{version}\"\npackages:\n  bundle_dir: repo\ngroups:\n  etcd: [{{name: n1, address: 192.0.2.1}}]\n  patroni: [{{name: n1, address: 192.0.2.1}}]\n  haproxy: [{{name: n1, address: 192.0.2.1}}]\n"
        ),
    )
    .unwrap();
    pgdeploy::inventory::load(&path).unwrap().0
}

/// PostgreSQL 15 versions the configured Debian sources offer (highest first).
fn available_postgres_15(scratch: &Path) -> Vec<String> {
    let apt = PrivateApt::new(&scratch.join("apt"), "amd64");
    let text = private_sources(&SourceChoice::System("/etc/apt".into()), DEBIAN_CODENAME).unwrap();
    apt.prepare(&text).unwrap();
    apt.update().unwrap();
    madison_versions(&apt.madison("postgresql-15").unwrap(), "postgresql-15")
}

/// "15.18-0+deb12u1" -> "15.18"
fn minor_of(debian_version: &str) -> String {
    debian_version.split('-').next().unwrap().to_string()
}

fn build_quiet(opts: &BuildOptions) -> Result<BuildSummary, BundleError> {
    build(opts, &mut |_line: &str| {})
}

fn packages_index_has(dir: &Path, package: &str, version: &str) -> bool {
    let text = std::fs::read_to_string(dir.join("Packages")).unwrap();
    text.split("\n\n").any(|para| {
        para.lines().any(|l| l == format!("Package: {package}"))
            && para.lines().any(|l| l == format!("Version: {version}"))
    })
}

#[test]
fn bundle_pins_postgres_indexes_and_hashes_every_file() {
    let scratch = tempfile::tempdir().unwrap();
    let versions = available_postgres_15(scratch.path());
    assert!(
        !versions.is_empty(),
        "no postgresql-15 in the Debian sources"
    );
    let pinned = versions.last().unwrap().clone(); // the oldest: not apt's default choice
    let inv = inventory(scratch.path(), &minor_of(&pinned));
    let opts = BuildOptions::from_inventory(&inv, &[]);
    let repo = scratch.path().join("repo");
    assert_eq!(opts.bundle_dir, repo);

    let cold = build_quiet(&opts).unwrap();
    let m = Manifest::load(&repo).unwrap();
    assert_eq!(m.postgres_debian_version(), Some(pinned.as_str()));
    assert_eq!(m.debian_release.codename, "bookworm");
    assert!(
        m.debian_release.version.starts_with("12"),
        "{:?}",
        m.debian_release
    );
    assert_eq!(cold.packages, m.debs.len());
    assert!(m.debs.len() > 50, "closure too small: {}", m.debs.len());

    // the pinned server, client and matching libpq5 are there, and listed in the index
    for pkg in ["postgresql-15", "postgresql-client-15", "libpq5"] {
        let f = m
            .debs
            .iter()
            .find(|f| f.package == pkg)
            .unwrap_or_else(|| panic!("{pkg} missing from the manifest"));
        assert_eq!(f.version, pinned, "{pkg}");
        assert!(repo.join(&f.name).is_file(), "{} missing", f.name);
        assert!(
            packages_index_has(&repo, pkg, &pinned),
            "{pkg} not in Packages"
        );
    }
    // the rest of the set, and closure members an empty system needs
    for pkg in [
        "patroni",
        "python3-etcd",
        "python3-psycopg2",
        "etcd-server",
        "etcd-client",
        "haproxy",
        "pgbackrest",
        "libc6",
        "python3",
    ] {
        assert!(m.version_of(pkg).is_some(), "{pkg} missing from the bundle");
        assert!(
            packages_index_has(&repo, pkg, m.version_of(pkg).unwrap()),
            "{pkg} not in Packages"
        );
    }
    // only one postgresql-15 .deb when one minor is asked for
    assert_eq!(
        m.debs
            .iter()
            .filter(|f| f.package == "postgresql-15")
            .count(),
        1
    );

    // manifest hashes match the files, computed independently with sha256sum
    m.verify(&repo).unwrap();
    let out = Command::new("sha256sum")
        .args(m.files().map(|f| f.name.as_str()))
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(out.status.success());
    let sums = String::from_utf8(out.stdout).unwrap();
    for f in m.files() {
        assert!(
            sums.lines()
                .any(|l| l == format!("{}  {}", f.sha256, f.name)),
            "sha256 of {} differs",
            f.name
        );
    }
    // every .deb on disk is in the manifest; the index files are there
    let on_disk: Vec<String> = std::fs::read_dir(&repo)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb"))
        .collect();
    assert_eq!(on_disk.len(), m.debs.len());
    for n in ["Packages", "Packages.gz", "Release", "manifest.json"] {
        assert!(repo.join(n).is_file(), "{n} missing");
    }

    // a rebuild with nothing changed downloads nothing (and cleans an interrupted build's
    // temporary directory)
    let stale = scratch.path().join(".repo.tmp-999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("half.deb"), b"partial").unwrap();
    let warm = build_quiet(&opts).unwrap();
    assert_eq!(warm.downloaded, 0);
    assert!(warm.up_to_date);
    assert_eq!(warm.packages, cold.packages);

    // a damaged file in the bundle (and so in the hard-linked cache) is detected and fetched again
    let zlib = m.debs.iter().find(|f| f.package == "zlib1g").unwrap();
    let mut data = std::fs::read(repo.join(&zlib.name)).unwrap();
    data.extend_from_slice(b"damage");
    std::fs::write(repo.join(&zlib.name), data).unwrap();
    let repaired = build_quiet(&opts).unwrap();
    assert!(!repaired.up_to_date);
    assert_eq!(repaired.downloaded, 1);
    Manifest::load(&repo).unwrap().verify(&repo).unwrap();
    eprintln!(
        "cold: {} packages, {} bytes, {:?}; warm: {:?}",
        cold.packages, cold.bytes, cold.elapsed, warm.elapsed
    );
    // no temporary directories are left next to the bundle
    let leftovers: Vec<PathBuf> = std::fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".repo.tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // several minors side by side (rolling upgrade)
    if versions.len() > 1 {
        let newest = versions[0].clone();
        let opts2 = BuildOptions::from_inventory(&inv, &[minor_of(&newest)]);
        let both = build_quiet(&opts2).unwrap();
        assert!(both.downloaded < 10, "downloaded {}", both.downloaded);
        let m2 = Manifest::load(&repo).unwrap();
        for v in [&pinned, &newest] {
            for pkg in ["postgresql-15", "postgresql-client-15"] {
                assert!(
                    m2.debs.iter().any(|f| f.package == pkg && &f.version == v),
                    "{pkg} {v} missing"
                );
                assert!(
                    packages_index_has(&repo, pkg, v),
                    "{pkg} {v} not in Packages"
                );
            }
        }
        assert_eq!(m2.postgres.len(), 2);
        assert_eq!(m2.postgres[0].debian_version, pinned);
        m2.verify(&repo).unwrap();
    }
}

#[test]
fn unknown_postgres_minor_lists_available_versions() {
    let scratch = tempfile::tempdir().unwrap();
    let inv = inventory(scratch.path(), "15.99");
    let err = build_quiet(&BuildOptions::from_inventory(&inv, &[])).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("postgresql-15 15.99 not found in the package sources; available: 15."),
        "{msg}"
    );
    assert!(msg.contains("+deb12u"), "{msg}");
    // nothing was published
    assert!(!scratch.path().join("repo").join("manifest.json").exists());
}

/// A new user's first command: `pgdeploy bundle lab/inventory.yaml`, a relative path from the
/// directory above the inventory. Relative directories once reached apt as they were, and apt
/// (which resolves its state directories against each other) failed. Debian 13 here: the
/// bundle of the default release, resolved from this Debian 12 machine's mirror.
#[test]
fn bundle_with_a_relative_inventory_path_works() {
    let scratch = tempfile::tempdir().unwrap();
    let sub = scratch.path().join("lab");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(
        sub.join("inventory.yaml"),
        "cluster: {name: relative}\npackages: {bundle_dir: bundle}\ngroups:\n  etcd: [{name: n1, address: 192.0.2.1}]\n  patroni: [{name: n1, address: 192.0.2.1}]\n  haproxy: [{name: n1, address: 192.0.2.1}]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgdeploy"))
        .args(["bundle", "lab/inventory.yaml"])
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let m = Manifest::load(&sub.join("bundle")).unwrap();
    assert_eq!(m.debian_release.codename, "trixie", "{text}");
    assert!(
        m.postgres_debian_version()
            .is_some_and(|v| v.starts_with("17.12-")),
        "{:?}",
        m.postgres
    );
    for pkg in [
        "postgresql-17",
        "patroni",
        "etcd-server",
        "haproxy",
        "python3-etcd",
        "pgbackrest",
    ] {
        assert!(
            m.debs.iter().any(|d| d.package == pkg),
            "{pkg} missing from the Debian 13 bundle"
        );
    }
}

#[test]
fn refuses_to_replace_a_directory_that_is_not_a_bundle() {
    let scratch = tempfile::tempdir().unwrap();
    let inv = inventory(scratch.path(), "15.18");
    let repo = scratch.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("notes.txt"), "mine").unwrap();
    let err = build_quiet(&BuildOptions::from_inventory(&inv, &[])).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(repo.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// Run a command to completion within `limit`; kill it (by its PID) if it overruns.
fn run_within(cmd: &mut Command, limit: Duration, log: &Path) -> bool {
    let logf = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200)); // polling interval, not a wait for state
    }
}

/// The repository installs postgresql-15, patroni, etcd and haproxy into a fresh minbase
/// Debian 12 container that has no network and no other apt source.
#[test]
fn bundle_installs_offline_into_minbase_container() {
    let scratch = tempfile::tempdir().unwrap();
    let versions = available_postgres_15(scratch.path());
    let pinned = versions.last().unwrap().clone();
    let inv = inventory(scratch.path(), &minor_of(&pinned));
    let opts = BuildOptions::from_inventory(&inv, &[]);
    build_quiet(&opts).unwrap();

    // the mirror comes from this machine's apt sources
    let deb = filter_debian(
        &read_system_sources(Path::new("/etc/apt")).unwrap(),
        DEBIAN_CODENAME,
    );
    let mirror = deb
        .iter()
        .find(|e| e.suites.iter().any(|s| s == DEBIAN_CODENAME))
        .map(|e| e.uris[0].clone())
        .expect("a Debian bookworm source");
    let root = scratch.path().join("root");
    assert!(
        run_within(
            Command::new("debootstrap").args([
                "--variant=minbase",
                DEBIAN_CODENAME,
                root.to_str().unwrap(),
                &mirror,
            ]),
            Duration::from_secs(300),
            &scratch.path().join("debootstrap.log"),
        ),
        "debootstrap failed: {}",
        std::fs::read_to_string(scratch.path().join("debootstrap.log")).unwrap_or_default()
    );

    let script = format!(
        "set -e\n\
         rm -f /etc/apt/sources.list.d/*\n\
         echo 'deb [trusted=yes] file:/var/lib/pgdeploy/repo ./' > /etc/apt/sources.list\n\
         printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d\n\
         echo interfaces: $(tail -n +3 /proc/net/dev | cut -d: -f1)\n\
         apt-get update\n\
         DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           postgresql-15={pinned} postgresql-client-15={pinned} patroni python3-etcd \
           etcd-server etcd-client haproxy\n\
         dpkg-query -W -f '${{Package}}=${{Version}}\\n' postgresql-15 libpq5 patroni etcd-server haproxy\n\
         python3 -c 'import etcd, psycopg2; print(\"python modules ok\")'\n"
    );
    std::fs::write(root.join("root/install.sh"), script).unwrap();
    let log = scratch.path().join("install.log");
    let ok = run_within(
        Command::new("systemd-nspawn").args([
            "-q",
            "-D",
            root.to_str().unwrap(),
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--as-pid2",
            &format!(
                "--bind-ro={}:/var/lib/pgdeploy/repo",
                opts.bundle_dir.display()
            ),
            "/bin/sh",
            "/root/install.sh",
        ]),
        Duration::from_secs(300),
        &log,
    );
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(ok, "install in the container failed:\n{out}");
    assert!(
        out.lines().any(|l| l.trim_end() == "interfaces: lo"),
        "container had a network:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_end() == format!("postgresql-15={pinned}")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_end() == format!("libpq5={pinned}")),
        "{out}"
    );
    assert!(out.contains("python modules ok"), "{out}");
    for p in ["patroni=", "etcd-server=", "haproxy="] {
        assert!(out.contains(p), "{p} not installed:\n{out}");
    }
}
