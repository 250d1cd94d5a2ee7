//! RFC 2136 dynamic DNS UPDATE, signed with TSIG (RFC 8945), over TCP.
//!
//! Reads go straight to the configured (authoritative) server with recursion off and require the
//! AA flag. Updates carry a prerequisite that the RRset is exactly what was read, so two runs
//! cannot interleave into a wrong record set.

use super::error::DnsError;
use super::plan::{DnsPlan, RecordSet};
use super::tsig::TsigKey;
use super::Provider;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// TSIG fudge (allowed clock difference), seconds.
const FUDGE: u16 = 300;

/// Parse and check a name and its zone; the name must lie inside the zone. Nothing is sent.
pub fn check_name_in_zone(name: &str, zone: &str) -> Result<(Name, Name), DnsError> {
    let parse = |what: &str, s: &str| -> Result<Name, DnsError> {
        let mut n = Name::from_ascii(s).map_err(|e| DnsError::Config {
            msg: format!("{what} `{s}` is not a valid DNS name: {e}"),
            help: format!("write `dns.{what}` as a fully qualified name, e.g. pg.db.example.com."),
        })?;
        n.set_fqdn(true);
        Ok(n)
    };
    let n = parse("name", name)?;
    let z = parse("zone", zone)?;
    if z.is_root() || !z.zone_of(&n) {
        return Err(DnsError::NameOutsideZone {
            name: n.to_string(),
            zone: z.to_string(),
        });
    }
    Ok((n, z))
}

/// Resolve "ADDRESS[:PORT]" / "[V6]:PORT" / "HOST[:PORT]" (port 53 by default).
pub async fn resolve_server(server: &str) -> Result<SocketAddr, DnsError> {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = server
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    let target = if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:53")
    };
    let mut addrs = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| DnsError::Unreachable {
            server: server.to_string(),
            detail: format!("cannot resolve the server name: {e}"),
        })?;
    addrs.next().ok_or_else(|| DnsError::Unreachable {
        server: server.to_string(),
        detail: "the server name has no address".into(),
    })
}

/// The RFC 2136 provider.
#[derive(Debug, Clone)]
pub struct Rfc2136 {
    server: String,
    name: Name,
    zone: Name,
    key: Option<TsigKey>,
    timeout: Duration,
}

impl Rfc2136 {
    /// Checks that `name` lies in `zone` (before anything is sent).
    pub fn new(
        server: &str,
        name: &str,
        zone: &str,
        key: Option<TsigKey>,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let (name, zone) = check_name_in_zone(name, zone)?;
        Ok(Rfc2136 {
            server: server.to_string(),
            name,
            zone,
            key,
            timeout,
        })
    }

    fn signer(&self) -> Result<Option<TSigner>, DnsError> {
        let Some(k) = &self.key else { return Ok(None) };
        let key_name = Name::from_ascii(&k.name).map_err(|e| DnsError::Config {
            msg: format!("TSIG key name `{}` is not a valid DNS name: {e}", k.name),
            help: "use the key name exactly as in the server's `key` statement".into(),
        })?;
        TSigner::new(
            k.secret.expose().to_vec(),
            k.algorithm.to_hickory(),
            key_name,
            FUDGE,
        )
        .map(Some)
        .map_err(|e| DnsError::Config {
            msg: format!("TSIG key {}: {e}", k.name),
            help: "use hmac-sha256, hmac-sha384 or hmac-sha512".into(),
        })
    }

    fn key_name(&self) -> String {
        self.key
            .as_ref()
            .map(|k| k.name.clone())
            .unwrap_or_default()
    }

    /// Send one message over TCP and read the answer; checks TSIG on the answer.
    async fn exchange(
        &self,
        mut msg: Message,
        sign: bool,
        what: &str,
    ) -> Result<Message, DnsError> {
        let server = self.server.clone();
        let signer = if sign { self.signer()? } else { None };
        let mut verifier = None;
        if let Some(s) = &signer {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            verifier = msg.finalize(s, now).map_err(|e| DnsError::Protocol {
                server: server.clone(),
                detail: format!("cannot sign the {what}: {e}"),
            })?;
        }
        let bytes = msg.to_vec().map_err(|e| DnsError::Protocol {
            server: server.clone(),
            detail: format!("cannot encode the {what}: {e}"),
        })?;
        let len = u16::try_from(bytes.len()).map_err(|_| DnsError::Protocol {
            server: server.clone(),
            detail: format!("the {what} is too large"),
        })?;
        let addr = resolve_server(&server).await?;
        let io = async {
            let mut s = TcpStream::connect(addr)
                .await
                .map_err(|e| DnsError::Unreachable {
                    server: server.clone(),
                    detail: e.to_string(),
                })?;
            let mut out = Vec::with_capacity(bytes.len() + 2);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&bytes);
            let ioerr = |e: std::io::Error| DnsError::Unreachable {
                server: server.clone(),
                detail: format!("connection failed during the {what}: {e}"),
            };
            s.write_all(&out).await.map_err(ioerr)?;
            let mut lb = [0u8; 2];
            s.read_exact(&mut lb).await.map_err(ioerr)?;
            let mut buf = vec![0u8; u16::from_be_bytes(lb) as usize];
            s.read_exact(&mut buf).await.map_err(ioerr)?;
            Ok::<Vec<u8>, DnsError>(buf)
        };
        let buf =
            tokio::time::timeout(self.timeout, io)
                .await
                .map_err(|_| DnsError::Timeout {
                    server: server.clone(),
                    secs: self.timeout.as_secs().max(1),
                })??;
        let resp = Message::from_vec(&buf).map_err(|e| DnsError::Protocol {
            server: server.clone(),
            detail: format!("undecodable answer to the {what}: {e}"),
        })?;
        if resp.metadata.id != msg.metadata.id {
            return Err(DnsError::Protocol {
                server,
                detail: format!("the answer to the {what} has the wrong message id"),
            });
        }
        if let Some(sig) = resp.signature() {
            if let Some(err) = sig.data.error {
                let detail = match err {
                    TsigError::BadSig => "BADSIG: wrong secret".to_string(),
                    TsigError::BadKey => {
                        "BADKEY: the server does not know this key name/algorithm".to_string()
                    }
                    TsigError::BadTime => "BADTIME: the clocks differ too much".to_string(),
                    TsigError::BadTrunc => "BADTRUNC".to_string(),
                    TsigError::Unknown(c) => format!("TSIG error {c}"),
                };
                return Err(DnsError::KeyRejected {
                    server,
                    key: self.key_name(),
                    detail,
                });
            }
        }
        if let Some(mut v) = verifier {
            if resp.signature().is_none() && resp.metadata.response_code != ResponseCode::NoError {
                // an unsigned error answer (e.g. FORMERR): report its rcode below
            } else if let Err(e) = v.verify(&buf) {
                // hickory reports a MAC of the wrong size (what a server sends when it rejects
                // the key) as a "truncated HMAC" to be reported upstream; to the user this is a
                // rejected key.
                let e = e.to_string();
                let detail = if e.contains("truncated") || e.contains("file an issue") {
                    "the answer carries no valid signature: the server does not share this key"
                        .to_string()
                } else {
                    format!("the answer's signature does not verify: {e}")
                };
                return Err(DnsError::KeyRejected {
                    server,
                    key: self.key_name(),
                    detail,
                });
            }
        }
        if sign
            && resp.metadata.response_code == ResponseCode::NotAuth
            && resp.signature().is_none()
        {
            return Err(DnsError::KeyRejected {
                server,
                key: self.key_name(),
                detail: "NOTAUTH to a signed request".into(),
            });
        }
        Ok(resp)
    }

    fn new_message(&self, op: OpCode) -> Message {
        let mut m = Message::new(rand::random::<u16>(), MessageType::Query, op);
        m.metadata.recursion_desired = false;
        m
    }

    fn rcode_error(&self, rcode: ResponseCode, what: &str) -> DnsError {
        let zone = self.zone.to_string();
        let server = self.server.clone();
        match rcode {
            ResponseCode::Refused => DnsError::Refused {
                server,
                zone,
                what: what.into(),
            },
            ResponseCode::NotAuth => DnsError::NotAuthoritative {
                server,
                zone,
                detail: "NOTAUTH".into(),
            },
            ResponseCode::NotZone => DnsError::NotAuthoritative {
                server,
                zone,
                detail: format!("NOTZONE: {} is not in the zone", self.name),
            },
            other => DnsError::Server {
                server,
                what: what.into(),
                rcode: other.to_str().to_string(),
            },
        }
    }

    async fn query_type(&self, name: &Name, rt: RecordType) -> Result<Message, DnsError> {
        let mut m = self.new_message(OpCode::Query);
        let mut q = Query::query(name.clone(), rt);
        q.set_query_class(DNSClass::IN);
        m.add_query(q);
        let what = format!("{rt} query for {name}");
        let resp = self.exchange(m, false, &what).await?;
        match resp.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            rc => return Err(self.rcode_error(rc, &what)),
        }
        if !resp.metadata.authoritative {
            return Err(DnsError::NotAuthoritative {
                server: self.server.clone(),
                zone: self.zone.to_string(),
                detail: "its answer lacks the AA flag".into(),
            });
        }
        Ok(resp)
    }

    /// The current A and AAAA records of the name, read from the server itself.
    pub async fn read(&self) -> Result<RecordSet, DnsError> {
        let mut addrs = BTreeSet::new();
        let mut ttl: Option<u32> = None;
        for rt in [RecordType::A, RecordType::AAAA] {
            let resp = self.query_type(&self.name, rt).await?;
            for r in &resp.answers {
                if r.name != self.name {
                    continue;
                }
                let ip: IpAddr = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                addrs.insert(ip);
                ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
            }
        }
        Ok(RecordSet { addrs, ttl })
    }

    /// The zone's SOA serial (changes with every accepted update).
    pub async fn soa_serial(&self) -> Result<u32, DnsError> {
        let resp = self.query_type(&self.zone, RecordType::SOA).await?;
        resp.answers
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            })
            .ok_or_else(|| DnsError::NotAuthoritative {
                server: self.server.clone(),
                zone: self.zone.to_string(),
                detail: "no SOA record for the zone".into(),
            })
    }

    /// Build the guarded UPDATE message that turns `current` into `desired` (None: nothing to do).
    pub fn update_message(&self, current: &RecordSet, desired: &RecordSet) -> Option<Message> {
        let mut m = self.new_message(OpCode::Update);
        let mut zq = Query::query(self.zone.clone(), RecordType::SOA);
        zq.set_query_class(DNSClass::IN);
        m.add_query(zq);
        let ttl = desired.ttl.unwrap_or(0);
        let ttl_changed = desired.ttl != current.ttl;
        let mut any = false;
        for (rt, cur, des) in [
            (RecordType::A, current.v4(), desired.v4()),
            (RecordType::AAAA, current.v6(), desired.v6()),
        ] {
            if cur == des && (!ttl_changed || cur.is_empty()) {
                continue;
            }
            any = true;
            if cur.is_empty() {
                // prerequisite "RRset does not exist" (RFC 2136 2.4.3)
                let mut r = Record::update0(self.name.clone(), 0, rt);
                r.dns_class = DNSClass::NONE;
                m.add_answer(r);
            } else {
                // prerequisite "RRset exists (value dependent)" (RFC 2136 2.4.2)
                for a in &cur {
                    m.add_answer(Record::from_rdata(self.name.clone(), 0, rdata(a)));
                }
                // update: delete the RRset (RFC 2136 2.5.2)
                let mut r = Record::update0(self.name.clone(), 0, rt);
                r.dns_class = DNSClass::ANY;
                m.add_authority(r);
            }
            for a in &des {
                m.add_authority(Record::from_rdata(self.name.clone(), ttl, rdata(a)));
            }
        }
        any.then_some(m)
    }

    /// Send the guarded update. A failed prerequisite is `DnsError::PrerequisiteFailed`.
    pub async fn update(&self, current: &RecordSet, desired: &RecordSet) -> Result<(), DnsError> {
        let Some(m) = self.update_message(current, desired) else {
            return Ok(());
        };
        let what = format!("update of {}", self.name);
        let resp = self.exchange(m, true, &what).await?;
        match resp.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            rc @ (ResponseCode::NXRRSet
            | ResponseCode::YXRRSet
            | ResponseCode::NXDomain
            | ResponseCode::YXDomain) => Err(DnsError::PrerequisiteFailed {
                server: self.server.clone(),
                name: self.name.to_string(),
                rcode: rc.to_str().to_string(),
            }),
            rc => Err(self.rcode_error(rc, &what)),
        }
    }
}

fn rdata(a: &IpAddr) -> RData {
    match a {
        IpAddr::V4(v) => RData::A(A(*v)),
        IpAddr::V6(v) => RData::AAAA(AAAA(*v)),
    }
}

#[async_trait::async_trait]
impl Provider for Rfc2136 {
    fn describe(&self) -> String {
        format!("rfc2136 {} (zone {})", self.server, self.zone)
    }
    async fn query(&self) -> Result<RecordSet, DnsError> {
        self.read().await
    }
    async fn apply(&self, current: &RecordSet, plan: &DnsPlan) -> Result<(), DnsError> {
        if plan.is_empty() {
            return Ok(());
        }
        self.update(current, &plan.desired(current)).await
    }
}
