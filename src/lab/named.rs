//! The lab's authoritative DNS server: BIND 9 on the bridge address, zone `db.lab.test.`,
//! RFC 2136 updates signed with a TSIG key.

use super::error::{io, LabError, Result};
use super::net::GATEWAY;
use super::sys::{self, ProcId};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

pub const ZONE: &str = "db.lab.test.";
pub const NAME: &str = "pg.db.lab.test.";
pub const KEY_NAME: &str = "pgdeploy-lab";
pub const KEY_ALG: &str = "hmac-sha256";
pub const PORT: u16 = 53;

/// Generate a TSIG key file in BIND's `key` statement format.
pub fn generate_key() -> Result<String> {
    sys::run("tsig-keygen", &["-a", KEY_ALG, KEY_NAME])
}

/// Write the configuration and zone into `dir` and start `named -g` there.
pub fn start(dir: &Path, key_file_text: &str, hosts: &[(String, Ipv4Addr)]) -> Result<ProcId> {
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let d = dir.display();
    sys::write_file(&dir.join("tsig.key"), key_file_text.as_bytes(), 0o600)?;
    let conf = format!(
        r#"// pgdeploy lab DNS server
options {{
    directory "{d}";
    listen-on port {PORT} {{ {GATEWAY}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    pid-file none;
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
}};
controls {{ }};
include "{d}/tsig.key";
zone "{ZONE}" {{
    type primary;
    file "{d}/db.lab.test.zone";
    update-policy {{ grant {KEY_NAME} zonesub ANY; }};
}};
"#
    );
    sys::write_file(&dir.join("named.conf"), conf.as_bytes(), 0o600)?;
    let mut zone = format!(
        "$TTL 30\n@ IN SOA ns1.{ZONE} hostmaster.{ZONE} ( 1 60 30 600 30 )\n@ IN NS ns1.{ZONE}\nns1 IN A {GATEWAY}\n"
    );
    for (name, addr) in hosts {
        zone.push_str(&format!("{name} IN A {addr}\n"));
    }
    sys::write_file(&dir.join("db.lab.test.zone"), zone.as_bytes(), 0o644)?;
    let log = dir.join("named.log");
    sys::spawn_detached(
        "named",
        &[
            "-g".into(),
            "-4".into(),
            "-c".into(),
            dir.join("named.conf").to_string_lossy().into_owned(),
        ],
        &log,
    )
}

/// Wait until the server answers authoritatively for the zone's SOA.
pub async fn wait_ready(proc: ProcId, log: &Path, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        if !proc.alive() {
            return Err(LabError::NamedDied {
                log: log.to_path_buf(),
                tail: sys::tail(log, 15),
            });
        }
        let ok = tokio::task::spawn_blocking(|| soa_answers(SocketAddr::from((GATEWAY, PORT))))
            .await
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(LabError::Timeout {
                what: format!("named to answer for {ZONE} on {GATEWAY}:{PORT}"),
                secs: timeout.as_secs(),
                hint: format!("see {}", log.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Send one SOA query for the zone; true on an authoritative NOERROR answer.
pub fn soa_answers(server: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind(("0.0.0.0", 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    let id: u16 = rand::random();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // no RD; 1 question
    for label in ZONE.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 6, 0, 1]); // SOA, IN
    if sock.send_to(&q, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        return false;
    };
    if n < 12 || buf[0..2] != id.to_be_bytes() {
        return false;
    }
    let aa = buf[2] & 0x04 != 0;
    let rcode = buf[3] & 0x0f;
    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
    aa && rcode == 0 && ancount > 0
}
