//! Integration tests: dns. A real BIND 9 (`named`) on 127.0.0.1 with a TSIG key and a test zone.

use pgdeploy::dns::rfc2136::Rfc2136;
use pgdeploy::dns::tsig::{load_key, Algorithm};
use pgdeploy::dns::{self, DnsError, DnsPlan, HostHealth, Provider, RecordSet};
use std::collections::BTreeSet;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ZONE: &str = "db.test.";
const NAME: &str = "pg.db.test.";
const KEY: &str = "pgdeploy-test";
const KEY512: &str = "pgdeploy-test512";

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running `named`, killed by PID on drop.
struct Bind {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bind {
    fn start() -> Bind {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for (name, alg) in [(KEY, "hmac-sha256"), (KEY512, "hmac-sha512")] {
            let out = Command::new("tsig-keygen")
                .args(["-a", alg, name])
                .output()
                .expect("run tsig-keygen (install bind9-utils / bind9)");
            assert!(out.status.success(), "tsig-keygen failed");
            std::fs::write(d.join(format!("{name}.key")), &out.stdout).expect("write key");
        }
        std::fs::write(
            d.join("db.test.zone"),
            "$TTL 300\n@ IN SOA ns.db.test. hostmaster.db.test. 1 3600 600 86400 60\n@ IN NS ns.db.test.\nns IN A 127.0.0.1\n",
        )
        .expect("write zone");
        let port = free_port();
        let conf = format!(
            r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-query {{ any; }};
}};
controls {{ }};
include "{dir}/{KEY}.key";
include "{dir}/{KEY512}.key";
zone "db.test" {{
    type primary;
    file "{dir}/db.test.zone";
    update-policy {{
        grant {KEY} name pg.db.test. A AAAA;
        grant {KEY512} name pg.db.test. A AAAA;
    }};
}};
"#,
            dir = d.display()
        );
        let conf_path = d.join("named.conf");
        std::fs::write(&conf_path, conf).expect("write named.conf");
        let log = std::fs::File::create(d.join("named.log")).expect("log");
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(&conf_path)
            .args(["-p", &port.to_string(), "-n", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start named (install bind9)");
        let b = Bind { child, dir, port };
        b.wait_ready();
        b
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn key_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("dig")
                .args([
                    "+tcp",
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "-p",
                    &self.port.to_string(),
                    "@127.0.0.1",
                    "db.test.",
                    "SOA",
                ])
                .output()
                .expect("run dig (install bind9-dnsutils)");
            if out.status.success() && !out.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "named did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn provider(&self) -> Rfc2136 {
        self.provider_with(KEY)
    }

    fn provider_with(&self, key: &str) -> Rfc2136 {
        let k = load_key(key, "hmac-sha256", Some(&self.key_file(key)), None).expect("load key");
        Rfc2136::new(&self.server(), NAME, ZONE, Some(k), Duration::from_secs(3)).expect("provider")
    }

    /// The addresses as `dig` sees them (an independent reader).
    fn dig(&self) -> BTreeSet<IpAddr> {
        let mut out = BTreeSet::new();
        for t in ["A", "AAAA"] {
            let o = Command::new("dig")
                .args([
                    "+tcp",
                    "+short",
                    "-p",
                    &self.port.to_string(),
                    "@127.0.0.1",
                    NAME,
                    t,
                ])
                .output()
                .expect("dig");
            for l in String::from_utf8_lossy(&o.stdout).lines() {
                if let Ok(ip) = l.trim().parse() {
                    out.insert(ip);
                }
            }
        }
        out
    }

    /// Change the records behind our back with BIND's own nsupdate.
    fn nsupdate(&self, commands: &str) {
        use std::io::Write;
        let mut c = Command::new("nsupdate")
            .arg("-k")
            .arg(self.key_file(KEY))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nsupdate");
        let script = format!(
            "server 127.0.0.1 {}\nzone {ZONE}\n{commands}\nsend\n",
            self.port
        );
        c.stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write");
        let o = c.wait_with_output().expect("nsupdate");
        assert!(
            o.status.success(),
            "nsupdate failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn set(v: &[&str]) -> BTreeSet<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

fn hosts(up: &[(&str, bool)]) -> Vec<HostHealth> {
    up.iter()
        .enumerate()
        .map(|(i, (a, ok))| HostHealth {
            name: format!("haproxy{}", i + 1),
            publish: a.split(',').map(ip).collect(),
            healthy: *ok,
            reason: if *ok { "ok".into() } else { "down".into() },
        })
        .collect()
}

#[tokio::test]
async fn query_of_an_empty_name() {
    let b = Bind::start();
    let rs = b.provider().read().await.expect("query");
    assert_eq!(rs, RecordSet::default());
}

#[tokio::test]
async fn publish_noop_shrink() {
    let b = Bind::start();
    let p = b.provider();
    let three = hosts(&[
        ("10.231.0.31,fd00::31", true),
        ("10.231.0.32", true),
        ("10.231.0.33", true),
    ]);

    let t0 = Instant::now();
    let r = dns::sync(&p, &three, 30, false).await.expect("publish");
    let took = t0.elapsed();
    eprintln!("first sync (publish 3 A + 1 AAAA): {took:?}");
    assert!(r.applied);
    let want = set(&["10.231.0.31", "fd00::31", "10.231.0.32", "10.231.0.33"]);
    assert_eq!(b.dig(), want);
    let rs = p.read().await.expect("read");
    assert_eq!(rs.addrs, want);
    assert_eq!(rs.ttl, Some(30));

    // second run: no UPDATE at all (the SOA serial does not move)
    let serial = p.soa_serial().await.expect("serial");
    let t0 = Instant::now();
    let r = dns::sync(&p, &three, 30, false).await.expect("second");
    eprintln!("no-op sync: {:?}", t0.elapsed());
    assert!(!r.applied);
    assert!(r.plan.is_empty());
    assert_eq!(p.soa_serial().await.expect("serial"), serial);

    // shrink: haproxy2 goes down
    let two = hosts(&[
        ("10.231.0.31,fd00::31", true),
        ("10.231.0.32", false),
        ("10.231.0.33", true),
    ]);
    let r = dns::sync(&p, &two, 30, false).await.expect("shrink");
    assert!(r.applied);
    assert_eq!(r.plan.remove, vec![ip("10.231.0.32")]);
    assert!(r.plan.add.is_empty());
    assert_eq!(b.dig(), set(&["10.231.0.31", "fd00::31", "10.231.0.33"]));
    assert!(p.soa_serial().await.expect("serial") > serial);

    // TTL change only
    let r = dns::sync(&p, &two, 60, false).await.expect("ttl");
    assert_eq!(r.plan.ttl_change, Some((30, 60)));
    assert_eq!(p.read().await.expect("read").ttl, Some(60));

    // a hmac-sha512 key works too
    let p512 = b.provider_with(KEY512);
    let r = dns::sync(&p512, &three, 60, false).await.expect("sha512");
    assert!(r.applied);
    assert_eq!(b.dig(), want);
}

#[tokio::test]
async fn all_down_leaves_records_with_a_warning() {
    let b = Bind::start();
    let p = b.provider();
    dns::sync(
        &p,
        &hosts(&[("10.231.0.31", true), ("10.231.0.32", true)]),
        30,
        false,
    )
    .await
    .expect("publish");
    let serial = p.soa_serial().await.expect("serial");
    let r = dns::sync(
        &p,
        &hosts(&[("10.231.0.31", false), ("10.231.0.32", false)]),
        30,
        false,
    )
    .await
    .expect("all down");
    assert!(!r.applied);
    assert!(r.plan.is_empty());
    assert!(
        r.plan
            .warnings
            .iter()
            .any(|w| w.contains("no HAProxy host passed")),
        "{:?}",
        r.plan.warnings
    );
    assert_eq!(b.dig(), set(&["10.231.0.31", "10.231.0.32"]));
    assert_eq!(p.soa_serial().await.expect("serial"), serial);
}

#[tokio::test]
async fn wrong_key_is_a_clear_error_and_changes_nothing() {
    let b = Bind::start();
    let p = b.provider();
    dns::sync(&p, &hosts(&[("10.231.0.31", true)]), 30, false)
        .await
        .expect("publish");
    let two = hosts(&[("10.231.0.31", true), ("10.231.0.32", true)]);

    // right name, wrong secret => BADSIG
    let bad = pgdeploy::dns::TsigKey {
        name: KEY.into(),
        algorithm: Algorithm::HmacSha256,
        secret: pgdeploy::dns::Secret::new(b"not the secret at all, 32 bytes".to_vec()),
    };
    let pb = Rfc2136::new(&b.server(), NAME, ZONE, Some(bad), Duration::from_secs(3)).expect("p");
    let e = dns::sync(&pb, &two, 30, false)
        .await
        .expect_err("must fail");
    let msg = e.to_string();
    assert!(matches!(e, DnsError::KeyRejected { .. }), "{e:?}");
    assert!(
        msg.contains("TSIG key rejected by 127.0.0.1:")
            && msg.contains("check key name, algorithm and secret"),
        "{msg}"
    );
    assert!(msg.contains("BADSIG"), "{msg}");
    eprintln!("wrong secret: {:?}", miette::Report::new(e));

    // unknown key name => BADKEY
    let unknown = pgdeploy::dns::TsigKey {
        name: "nobody".into(),
        algorithm: Algorithm::HmacSha256,
        secret: pgdeploy::dns::Secret::new(vec![7; 32]),
    };
    let pu = Rfc2136::new(
        &b.server(),
        NAME,
        ZONE,
        Some(unknown),
        Duration::from_secs(3),
    )
    .expect("p");
    let e = dns::sync(&pu, &two, 30, false)
        .await
        .expect_err("must fail");
    assert!(matches!(e, DnsError::KeyRejected { .. }), "{e:?}");
    assert!(e.to_string().contains("BADKEY"), "{e}");
    eprintln!("unknown key: {e}");

    // right secret, wrong algorithm => rejected too
    let k = load_key(KEY, "hmac-sha256", Some(&b.key_file(KEY)), None).expect("key");
    let wrong_alg = pgdeploy::dns::TsigKey {
        algorithm: Algorithm::HmacSha512,
        ..k
    };
    let pa = Rfc2136::new(
        &b.server(),
        NAME,
        ZONE,
        Some(wrong_alg),
        Duration::from_secs(3),
    )
    .expect("p");
    let e = dns::sync(&pa, &two, 30, false)
        .await
        .expect_err("must fail");
    assert!(matches!(e, DnsError::KeyRejected { .. }), "{e:?}");
    eprintln!("wrong algorithm: {e}");

    assert_eq!(b.dig(), set(&["10.231.0.31"]));
}

#[tokio::test]
async fn name_outside_the_zone_is_refused_before_sending() {
    // a listener that would see any connection
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let server = l.local_addr().expect("addr").to_string();
    let e = Rfc2136::new(
        &server,
        "pg.elsewhere.test.",
        ZONE,
        None,
        Duration::from_secs(1),
    )
    .expect_err("must fail");
    assert!(matches!(e, DnsError::NameOutsideZone { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("pg.elsewhere.test. is not inside zone db.test."),
        "{e}"
    );
    // and through the inventory
    let dir = tempfile::tempdir().expect("tmp");
    let inv = write_inventory(
        dir.path(),
        &server,
        "pg.elsewhere.test.",
        "secret_file: none.key",
        &["10.231.0.31"],
        (5000, 7000),
    );
    // The inventory loader refuses it (with the file's line and column), before any key is
    // read or anything is sent.
    let e = pgdeploy::inventory::load(&inv).expect_err("must fail");
    let text = pgdeploy::inventory::render_plain(
        e.downcast_ref::<pgdeploy::inventory::InventoryError>()
            .expect("an inventory report"),
    );
    assert!(text.contains("is outside the zone"), "{text}");
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the server: {other:?}"),
    }
}

#[tokio::test]
async fn server_not_listening_or_silent() {
    let port = free_port();
    let p = Rfc2136::new(
        &format!("127.0.0.1:{port}"),
        NAME,
        ZONE,
        None,
        Duration::from_secs(2),
    )
    .expect("p");
    let e = p.read().await.expect_err("nobody listens");
    assert!(matches!(e, DnsError::Unreachable { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("DNS server 127.0.0.1:{port} is unreachable")),
        "{e}"
    );

    // accepts TCP but never answers => timeout
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let p = Rfc2136::new(&addr.to_string(), NAME, ZONE, None, Duration::from_secs(1)).expect("p");
    let t0 = Instant::now();
    let e = p.read().await.expect_err("silent server");
    assert!(matches!(e, DnsError::Timeout { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test]
async fn zone_not_served_is_a_clear_error() {
    let b = Bind::start();
    let k = load_key(KEY, "hmac-sha256", Some(&b.key_file(KEY)), None).expect("key");
    let p = Rfc2136::new(
        &b.server(),
        "pg.other.test.",
        "other.test.",
        Some(k),
        Duration::from_secs(3),
    )
    .expect("p");
    let e = p
        .read()
        .await
        .expect_err("query of a zone it does not serve");
    assert!(
        matches!(
            e,
            DnsError::Refused { .. } | DnsError::NotAuthoritative { .. }
        ),
        "{e:?}"
    );
    eprintln!("query of a foreign zone: {e}");
    let cur = RecordSet::default();
    let want = RecordSet::new([ip("10.231.0.31")], Some(30));
    let e = p
        .update(&cur, &want)
        .await
        .expect_err("update of a zone it does not serve");
    assert!(
        matches!(
            e,
            DnsError::Refused { .. } | DnsError::NotAuthoritative { .. }
        ),
        "{e:?}"
    );
    eprintln!("update of a foreign zone: {e}");
}

#[tokio::test]
async fn concurrent_change_fails_the_prerequisite() {
    let b = Bind::start();
    let p = b.provider();
    let healthy = hosts(&[("10.231.0.31", true), ("10.231.0.32", true)]);

    // 1. "RRset does not exist": we read nothing, someone adds a record, our update must fail
    let before = p.read().await.expect("read");
    let plan = dns::plan(&before, &[ip("10.231.0.31"), ip("10.231.0.32")], &[], 30);
    b.nsupdate(&format!("update add {NAME} 30 A 10.9.9.9"));
    let e = p.apply(&before, &plan).await.expect_err("stale read");
    assert!(e.is_prerequisite_failure(), "{e:?}");
    assert!(e.to_string().contains("changed on"), "{e}");
    assert_eq!(b.dig(), set(&["10.9.9.9"]));

    // 2. "RRset exists (value dependent)": read, someone changes it, our update must fail
    let before = p.read().await.expect("read");
    let plan = dns::plan(&before, &[ip("10.231.0.31"), ip("10.231.0.32")], &[], 30);
    b.nsupdate(&format!("update add {NAME} 30 A 10.8.8.8"));
    let e = p.apply(&before, &plan).await.expect_err("stale read");
    assert!(e.is_prerequisite_failure(), "{e:?}");
    assert_eq!(b.dig(), set(&["10.9.9.9", "10.8.8.8"]));

    // 3. sync() re-reads and converges
    let r = dns::sync(&p, &healthy, 30, false).await.expect("sync");
    assert!(r.applied);
    assert_eq!(b.dig(), set(&["10.231.0.31", "10.231.0.32"]));
}

#[test]
fn plan_rules() {
    let all = [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")];
    let cur = RecordSet::new(all, Some(30));
    // unchanged => empty plan
    let p = dns::plan(&cur, &all, &all, 30);
    assert!(p.is_empty());
    assert_eq!(
        p,
        DnsPlan {
            ttl: 30,
            ..DnsPlan::default()
        }
    );
    // all down => nothing, with a warning
    let p = dns::plan(&cur, &[], &all, 30);
    assert!(p.is_empty());
    assert_eq!(p.warnings.len(), 1);
    // one down => remove it
    let p = dns::plan(&cur, &all[..2], &all, 30);
    assert_eq!(p.remove, vec![all[2]]);
    assert!(p.add.is_empty());
    assert_eq!(p.desired(&cur).addrs, all[..2].iter().copied().collect());
    // the last healthy one stays even when every other goes
    let p = dns::plan(&cur, &all[2..], &all, 30);
    assert_eq!(p.desired(&cur).addrs, all[2..].iter().copied().collect());
    // from empty => add all, no ttl change
    let p = dns::plan(&RecordSet::default(), &all, &all, 30);
    assert_eq!(p.add.len(), 3);
    assert_eq!(p.ttl_change, None);
    // ttl differs => ttl change only
    let p = dns::plan(&cur, &all, &all, 60);
    assert_eq!(p.ttl_change, Some((30, 60)));
    assert!(p.add.is_empty() && p.remove.is_empty());
    // a foreign record is removed with a warning
    let foreign = RecordSet::new([all[0], ip("192.0.2.9")], Some(30));
    let p = dns::plan(&foreign, &all[..1], &all, 30);
    assert_eq!(p.remove, vec![ip("192.0.2.9")]);
    assert!(p.warnings.iter().any(|w| w.contains("192.0.2.9")));
    // unknown ttl (dyndns2) never asks for a ttl change
    let p = dns::plan(&RecordSet::new(all, None), &all, &all, 30);
    assert!(p.is_empty());
}

fn write_inventory(
    dir: &Path,
    server: &str,
    name: &str,
    secret: &str,
    haproxy: &[&str],
    ports: (u16, u16),
) -> PathBuf {
    let mut hosts = String::new();
    for (i, a) in haproxy.iter().enumerate() {
        hosts.push_str(&format!(
            "    - {{ name: haproxy{}, address: \"{a}\" }}\n",
            i + 1
        ));
    }
    let text = format!(
        "cluster: {{ name: t }}\nhaproxy: {{ primary_port: {}, stats_port: {} }}\ndns:\n  name: {name}\n  zone: {ZONE}\n  server: \"{server}\"\n  ttl: 30\n  tsig:\n    key_name: {KEY}\n    {secret}\ngroups:\n  etcd:\n    - {{ name: db1, address: 10.231.0.21 }}\n  patroni:\n    - {{ name: db1, address: 10.231.0.21 }}\n  haproxy:\n{hosts}",
        ports.0,
        ports.1
    );
    let p = dir.join("inventory.yml");
    std::fs::write(&p, text).expect("write inventory");
    p
}

/// A tiny dyndns2 peer: answers each request with the next canned (status, body) and records
/// the request heads.
async fn dyndns2_server(
    replies: Vec<(u16, &'static str)>,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        for (status, body) in replies {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (url, rx)
}

#[tokio::test]
async fn dyndns2_provider() {
    use pgdeploy::dns::dyndns2::Dyndns2;
    use pgdeploy::dns::Secret;
    let (url, mut rx) = dyndns2_server(vec![
        (200, "good 10.231.0.31,10.231.0.32\n"),
        (200, "nochg 10.231.0.31,10.231.0.32\n"),
        (200, "badauth\n"),
        (200, "nohost\n"),
        (401, "unauthorized\n"),
    ])
    .await;
    // the name does not resolve, so the provider reads an empty set and plans to add both
    let p = Dyndns2::new(
        &url,
        "pg.nonexistent.invalid.",
        "user",
        Secret::new(b"pa:ss".to_vec()),
        Duration::from_secs(3),
    )
    .expect("provider");
    let health = hosts(&[
        ("10.231.0.31", true),
        ("10.231.0.32", true),
        ("10.231.0.33", false),
    ]);
    let r = dns::sync(&p, &health, 30, false).await.expect("good");
    assert!(r.applied);
    let head = rx.recv().await.expect("request");
    assert!(
        head.starts_with("GET /nic/update?hostname=pg.nonexistent.invalid&myip=10.231.0.31,10.231.0.32 HTTP/1.1\r\n"),
        "{head}"
    );
    // basic auth of user:pa:ss
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: basic dxnlcjpwytpzcw=="),
        "{head}"
    );
    dns::sync(&p, &health, 30, false)
        .await
        .expect("nochg is fine");
    for code in ["badauth", "nohost", "401"] {
        let e = dns::sync(&p, &health, 30, false).await.expect_err(code);
        match &e {
            DnsError::Dyndns2 { code: c, .. } => assert_eq!(c, code),
            other => panic!("{other:?}"),
        }
        eprintln!("dyndns2 {code}: {e}");
    }
    // nothing listening
    let port = free_port();
    let p = Dyndns2::new(
        &format!("http://127.0.0.1:{port}"),
        "pg.nonexistent.invalid.",
        "u",
        Secret::new(b"p".to_vec()),
        Duration::from_secs(2),
    )
    .expect("provider");
    let e = dns::sync(&p, &health, 30, false)
        .await
        .expect_err("unreachable");
    assert!(matches!(e, DnsError::Http { .. }), "{e:?}");
}

/// A fake HAProxy host for the health check: the primary port accepts, the stats port serves a
/// CSV whose `primary` backend has `up` servers UP.
async fn fake_haproxy(
    addr: &str,
    primary: u16,
    stats: u16,
    up: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = tokio::net::TcpListener::bind((addr, primary))
        .await
        .expect("bind primary");
    let s = tokio::net::TcpListener::bind((addr, stats))
        .await
        .expect("bind stats");
    let mut csv = String::from("# pxname,svname,qcur,status,weight\nprimary,FRONTEND,,OPEN,\n");
    for i in 0..3 {
        csv.push_str(&format!(
            "primary,pg{},0,{},1\n",
            i + 1,
            if i < up { "UP" } else { "DOWN" }
        ));
    }
    csv.push_str("primary,BACKEND,0,UP,1\n");
    vec![
        tokio::spawn(async move {
            while let Ok((c, _)) = p.accept().await {
                drop(c);
            }
        }),
        tokio::spawn(async move {
            while let Ok((mut c, _)) = s.accept().await {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{csv}",
                    csv.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
            }
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_end_to_end() {
    let b = Bind::start();
    let primary = free_port();
    let stats = free_port();
    let mut tasks = Vec::new();
    tasks.extend(fake_haproxy("127.0.0.31", primary, stats, 1).await);
    tasks.extend(fake_haproxy("127.0.0.32", primary, stats, 1).await);
    tasks.extend(fake_haproxy("127.0.0.33", primary, stats, 0).await); // no leader behind it
    let dir = tempfile::tempdir().expect("tmp");
    let secret = format!("secret_file: {}", b.key_file(KEY).display());
    let inv = write_inventory(
        dir.path(),
        &b.server(),
        NAME,
        &secret,
        &["127.0.0.31", "127.0.0.32", "127.0.0.33", "127.0.0.34"], // .34: nothing there
        (primary, stats),
    );
    let bin = env!("CARGO_BIN_EXE_pgdeploy");
    let run = |extra: &[&str]| {
        let mut c = tokio::process::Command::new(bin);
        c.args(["dns", "sync"])
            .arg(&inv)
            .args(extra)
            .kill_on_drop(true);
        c
    };

    let o = run(&["--dry-run"]).output().await.expect("run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("dry run: nothing sent"), "{out}");
    assert!(b.dig().is_empty());

    let t0 = Instant::now();
    let o = run(&[]).output().await.expect("run");
    let took = t0.elapsed();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("pgdeploy dns sync (process, 4 health checks, 1 update): {took:?}\n{out}");
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("+ A 127.0.0.31") && out.contains("+ A 127.0.0.32"),
        "{out}"
    );
    assert!(
        out.contains("haproxy3 (127.0.0.33): DOWN: no server is UP"),
        "{out}"
    );
    assert!(out.contains("haproxy4 (127.0.0.34): DOWN"), "{out}");
    assert_eq!(b.dig(), set(&["127.0.0.31", "127.0.0.32"]));

    let o = run(&[]).output().await.expect("run");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success() && out.contains("no change"), "{out}");

    // --watch: someone adds a record; the watcher removes it; Ctrl-C ends it cleanly
    let child = run(&["--watch", "--interval", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    b.nsupdate(&format!("update add {NAME} 30 A 10.9.9.9"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.dig() != set(&["127.0.0.31", "127.0.0.32"]) {
        assert!(
            Instant::now() < deadline,
            "the watcher did not repair the records"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = child.id().expect("pid") as i32;
    // SAFETY: plain kill(2) of the child we started
    unsafe { libc::kill(pid, libc::SIGINT) };
    let o = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("watcher stops on SIGINT")
        .expect("wait");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("- A 10.9.9.9"), "{out}");

    // The journal: the three syncs that could send updates (not the dry run), each update a
    // change line with its result.
    let text =
        std::fs::read_to_string(dir.path().join(".pgdeploy/t/journal.jsonl")).expect("the journal");
    let j = pgdeploy::journal::parse(&text);
    assert_eq!(j.unreadable, 0, "{text}");
    let runs = pgdeploy::journal::summarize(&j, &|_| false);
    let got: Vec<(&str, &str, usize)> = runs
        .iter()
        .map(|r| (r.command.as_str(), r.result.word(), r.changes))
        .collect();
    assert_eq!(
        got,
        vec![
            ("dns sync", "ok", 1),
            ("dns sync", "ok", 0),
            ("dns sync", "ok", 1)
        ],
        "{text}"
    );
    let changes: Vec<String> = j
        .lines
        .iter()
        .filter_map(|l| match l {
            pgdeploy::journal::Line::Change(c) => {
                assert_eq!(c.result, pgdeploy::journal::ChangeResult::Ok, "{c:?}");
                assert_eq!(c.phase, "dns");
                Some(c.change.clone())
            }
            _ => None,
        })
        .collect();
    assert!(changes[0].contains("+ A 127.0.0.31"), "{changes:?}");
    assert!(changes[1].contains("- A 10.9.9.9"), "{changes:?}");
    for t in tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_in_parallel_with_short_timeouts() {
    use pgdeploy::dns::{HealthPorts, HealthTarget};
    // each host: the primary port accepts, the stats port accepts but never answers
    let mut targets = Vec::new();
    let mut keep = Vec::new();
    let primary = free_port();
    let stats = free_port();
    for last in 41..44u8 {
        let a = format!("127.0.0.{last}");
        keep.push(
            tokio::net::TcpListener::bind((a.as_str(), primary))
                .await
                .expect("bind"),
        );
        keep.push(
            tokio::net::TcpListener::bind((a.as_str(), stats))
                .await
                .expect("bind"),
        );
        targets.push(HealthTarget {
            name: format!("h{last}"),
            check_addr: ip(&a),
            publish: vec![ip(&a)],
        });
    }
    let ports = HealthPorts {
        primary,
        stats,
        timeout: Duration::from_secs(1),
    };
    let t0 = Instant::now();
    let res = dns::check_all(&targets, ports).await;
    let took = t0.elapsed();
    eprintln!("3 silent HAProxy hosts checked in {took:?}");
    assert!(
        took < Duration::from_millis(2500),
        "checks are not parallel: {took:?}"
    );
    for r in &res {
        assert!(!r.healthy);
        assert!(r.reason.contains("timed out"), "{}", r.reason);
    }
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_exit_non_zero_and_secret_from_env() {
    let b = Bind::start();
    let dir = tempfile::tempdir().expect("tmp");
    let bin = env!("CARGO_BIN_EXE_pgdeploy");
    let primary = free_port();
    let stats = free_port();
    let tasks = fake_haproxy("127.0.0.51", primary, stats, 1).await;

    // a wrong secret from the environment: clear error, exit code != 0, the secret not printed
    let inv = write_inventory(
        dir.path(),
        &b.server(),
        NAME,
        "secret_env: PGD_TEST_TSIG",
        &["127.0.0.51"],
        (primary, stats),
    );
    let wrong = "d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyE=";
    let o = tokio::process::Command::new(bin)
        .args(["dns", "sync"])
        .arg(&inv)
        .env("PGD_TEST_TSIG", wrong)
        .output()
        .await
        .expect("run");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{all}");
    assert!(all.contains("TSIG key rejected by"), "{all}");
    assert!(!all.contains(wrong), "secret printed: {all}");
    assert!(b.dig().is_empty());

    // the right secret from the environment works
    let text = std::fs::read_to_string(b.key_file(KEY)).expect("key");
    let secret = text
        .split('"')
        .nth(3)
        .expect("secret in key file")
        .to_string();
    let o = tokio::process::Command::new(bin)
        .args(["dns", "sync"])
        .arg(&inv)
        .env("PGD_TEST_TSIG", &secret)
        .output()
        .await
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(b.dig(), set(&["127.0.0.51"]));

    // server down: clear error, exit code != 0
    let inv = write_inventory(
        dir.path(),
        &format!("127.0.0.1:{}", free_port()),
        NAME,
        "secret_env: PGD_TEST_TSIG",
        &["127.0.0.51"],
        (primary, stats),
    );
    let o = tokio::process::Command::new(bin)
        .args(["dns", "sync"])
        .arg(&inv)
        .env("PGD_TEST_TSIG", &secret)
        .output()
        .await
        .expect("run");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    assert!(err.contains("is unreachable"), "{err}");
    for t in tasks {
        t.abort();
    }
}

/// Injects a concurrent change right before the first update (the race a second pgdeploy run
/// would cause); everything else goes to the real provider.
struct Racy<'a> {
    inner: Rfc2136,
    bind: &'a Bind,
    raced: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Provider for Racy<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn query(&self) -> Result<RecordSet, DnsError> {
        self.inner.query().await
    }
    async fn apply(&self, current: &RecordSet, plan: &DnsPlan) -> Result<(), DnsError> {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.bind
                .nsupdate(&format!("update add {NAME} 30 A 10.7.7.7"));
        }
        self.inner.apply(current, plan).await
    }
}

#[tokio::test]
async fn sync_rereads_after_a_failed_prerequisite() {
    let b = Bind::start();
    let racy = Racy {
        inner: b.provider(),
        bind: &b,
        raced: false.into(),
    };
    let r = dns::sync(
        &racy,
        &hosts(&[("10.231.0.31", true), ("10.231.0.32", true)]),
        30,
        false,
    )
    .await
    .expect("sync converges");
    assert!(r.applied);
    assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    assert!(
        r.notes[0].contains("prerequisite failed")
            && r.notes[0].contains("reading the records again"),
        "{:?}",
        r.notes
    );
    assert_eq!(r.before.addrs, set(&["10.7.7.7"]));
    assert_eq!(b.dig(), set(&["10.231.0.31", "10.231.0.32"]));
}
