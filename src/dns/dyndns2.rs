//! The dyndns2 HTTP update protocol (`GET /nic/update?hostname=..&myip=a,b`, basic auth).
//!
//! The protocol cannot read records back nor set a TTL: `query` resolves the name through the
//! system resolver (so it may lag by the record's TTL) and reports no TTL.

use super::error::DnsError;
use super::plan::{DnsPlan, RecordSet};
use super::tsig::Secret;
use super::Provider;
use std::collections::BTreeSet;
use std::time::Duration;

/// What a dyndns2 server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `good ADDRS`: updated.
    Good,
    /// `nochg ADDRS`: the addresses were already set.
    NoChange,
    /// Any error code, with an explanation and what to do.
    Error {
        code: String,
        meaning: String,
        help: String,
    },
}

/// Parse the body of a dyndns2 answer (one line per hostname; the first decides).
pub fn parse_reply(body: &str) -> Reply {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let code = line.split_whitespace().next().unwrap_or("").to_string();
    let (meaning, help) = match code.as_str() {
        "good" => return Reply::Good,
        "nochg" => return Reply::NoChange,
        "badauth" => (
            "the user name or password was rejected",
            "check `dns.tsig.key_name` (the user name) and the password in `dns.tsig.secret_file` / `secret_env`",
        ),
        "!donator" => (
            "the account may not use this feature",
            "check the account's plan with the provider",
        ),
        "notfqdn" => (
            "the hostname is not a fully qualified domain name",
            "set `dns.name` to a full name such as pg.example.com.",
        ),
        "nohost" => (
            "the hostname does not exist in this account",
            "create the hostname at the provider or fix `dns.name`",
        ),
        "numhost" => (
            "too many hosts in one request",
            "update fewer hostnames at once",
        ),
        "abuse" => (
            "the hostname is blocked for abuse",
            "contact the provider; pgdeploy sends nothing when nothing changed",
        ),
        "badagent" => (
            "the user agent or request was rejected",
            "report this to pgdeploy's maintainers",
        ),
        "dnserr" | "911" => (
            "the provider has a server-side problem",
            "try again later (wait at least a few minutes)",
        ),
        "" => (
            "the answer was empty",
            "check that `dns.server` is a dyndns2 update service",
        ),
        _ => (
            "unknown answer",
            "check that `dns.server` is a dyndns2 update service",
        ),
    };
    Reply::Error {
        code: if code.is_empty() {
            "(empty)".into()
        } else {
            code
        },
        meaning: meaning.into(),
        help: help.into(),
    }
}

/// The dyndns2 provider.
#[derive(Debug, Clone)]
pub struct Dyndns2 {
    base: String,
    hostname: String,
    username: String,
    password: Secret,
    timeout: Duration,
}

impl Dyndns2 {
    /// `server`: base URL (`https://` is assumed without a scheme); `name`: the hostname.
    pub fn new(
        server: &str,
        name: &str,
        username: &str,
        password: Secret,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let base = if server.contains("://") {
            server.to_string()
        } else {
            format!("https://{server}")
        };
        reqwest::Url::parse(&base).map_err(|e| DnsError::Config {
            msg: format!("`dns.server` `{server}` is not a URL: {e}"),
            help: "for dyndns2 set `dns.server` to the service's base URL, e.g. https://members.example.com".into(),
        })?;
        let hostname = name.trim_end_matches('.');
        if hostname.is_empty()
            || !hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(DnsError::Config {
                msg: format!("`dns.name` `{name}` is not a valid host name"),
                help: "use letters, digits, '-' and '.', e.g. pg.example.com.".into(),
            });
        }
        Ok(Dyndns2 {
            base,
            hostname: name.trim_end_matches('.').to_string(),
            username: username.to_string(),
            password,
            timeout,
        })
    }

    fn update_url(&self, addrs: &BTreeSet<std::net::IpAddr>) -> Result<reqwest::Url, DnsError> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| DnsError::Config {
            msg: format!("`dns.server` `{}` is not a URL: {e}", self.base),
            help: "set `dns.server` to the service's base URL".into(),
        })?;
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/nic/update");
        }
        let myip: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        // hostname is checked to be letters, digits, '-' and '.', addresses need no escaping
        url.set_query(Some(&format!(
            "hostname={}&myip={}",
            self.hostname,
            myip.join(",")
        )));
        Ok(url)
    }

    /// Send the update for exactly `addrs`.
    pub async fn update(&self, addrs: &BTreeSet<std::net::IpAddr>) -> Result<Reply, DnsError> {
        let url = self.update_url(addrs)?;
        let shown = url.to_string();
        let http = |detail: String| DnsError::Http {
            url: shown.clone(),
            detail,
        };
        crate::crypto::install_default();
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .user_agent(concat!("pgdeploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| http(e.to_string()))?;
        let password = String::from_utf8_lossy(self.password.expose()).into_owned();
        let resp = client
            .get(url.clone())
            .basic_auth(&self.username, Some(password))
            .send()
            .await
            .map_err(|e| http(describe_reqwest(&e)))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| http(describe_reqwest(&e)))?;
        let reply = parse_reply(&body);
        match &reply {
            Reply::Good | Reply::NoChange => Ok(reply),
            Reply::Error {
                code,
                meaning,
                help,
            } => {
                if status == reqwest::StatusCode::UNAUTHORIZED && code != "badauth" {
                    return Err(DnsError::Dyndns2 {
                        url: shown,
                        hostname: self.hostname.clone(),
                        code: "401".into(),
                        meaning: "the user name or password was rejected".into(),
                        help: "check `dns.tsig.key_name` (the user name) and the password".into(),
                    });
                }
                Err(DnsError::Dyndns2 {
                    url: shown,
                    hostname: self.hostname.clone(),
                    code: code.clone(),
                    meaning: meaning.clone(),
                    help: help.clone(),
                })
            }
        }
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {e}")
    } else {
        e.to_string()
    }
}

#[async_trait::async_trait]
impl Provider for Dyndns2 {
    fn describe(&self) -> String {
        format!("dyndns2 {}", self.base)
    }
    async fn query(&self) -> Result<RecordSet, DnsError> {
        let addrs = match tokio::time::timeout(
            self.timeout,
            tokio::net::lookup_host((self.hostname.as_str(), 0)),
        )
        .await
        {
            Ok(Ok(it)) => it.map(|sa| sa.ip()).collect(),
            // the name does not resolve (yet): nothing is published
            Ok(Err(_)) => BTreeSet::new(),
            Err(_) => {
                return Err(DnsError::Timeout {
                    server: "the system resolver".into(),
                    secs: self.timeout.as_secs().max(1),
                })
            }
        };
        Ok(RecordSet { addrs, ttl: None })
    }
    async fn apply(&self, current: &RecordSet, plan: &DnsPlan) -> Result<(), DnsError> {
        if plan.is_empty() {
            return Ok(());
        }
        self.update(&plan.desired(current).addrs).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("good 10.0.0.1,10.0.0.2\n"), Reply::Good);
        assert_eq!(parse_reply("\nnochg 10.0.0.1"), Reply::NoChange);
        for code in [
            "badauth", "nohost", "notfqdn", "abuse", "911", "dnserr", "!donator",
        ] {
            let Reply::Error { code: c, .. } = parse_reply(code) else {
                panic!("{code} parsed as success")
            };
            assert_eq!(c, code);
        }
        assert!(matches!(parse_reply(""), Reply::Error { .. }));
        assert!(matches!(parse_reply("<html>"), Reply::Error { .. }));
    }
}
