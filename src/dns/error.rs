//! Errors of the DNS layer: each names the server, zone or file and says what to do.

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum DnsError {
    #[error("DNS configuration: {msg}")]
    #[diagnostic(code(pgdeploy::dns::config), help("{help}"))]
    Config { msg: String, help: String },

    #[error("name {name} is not inside zone {zone}")]
    #[diagnostic(
        code(pgdeploy::dns::name_outside_zone),
        help(
            "set `dns.name` to a name that ends with `dns.zone` (nothing was sent to the server)"
        )
    )]
    NameOutsideZone { name: String, zone: String },

    #[error("TSIG secret for key {key}: {msg}")]
    #[diagnostic(
        code(pgdeploy::dns::secret),
        help("set `dns.tsig.secret_file` (a base64 secret or a BIND key file as written by tsig-keygen) or `dns.tsig.secret_env`")
    )]
    Secret { key: String, msg: String },

    #[error("DNS server {server} is unreachable: {detail}")]
    #[diagnostic(
        code(pgdeploy::dns::unreachable),
        help("check `dns.server` (ADDRESS:PORT) and that the server listens on TCP there")
    )]
    Unreachable { server: String, detail: String },

    #[error("DNS server {server} did not answer within {secs} s")]
    #[diagnostic(
        code(pgdeploy::dns::timeout),
        help("check that {server} is up and that no firewall drops DNS over TCP")
    )]
    Timeout { server: String, secs: u64 },

    #[error("TSIG key rejected by {server}: check key name, algorithm and secret ({detail})")]
    #[diagnostic(
        code(pgdeploy::dns::tsig_rejected),
        help("the key `{key}` must exist on the server with the same algorithm and secret; BADTIME means the clocks differ by more than the fudge (300 s)")
    )]
    KeyRejected {
        server: String,
        key: String,
        detail: String,
    },

    #[error("{server} is not authoritative for zone {zone} ({detail})")]
    #[diagnostic(
        code(pgdeploy::dns::not_authoritative),
        help("point `dns.server` at the primary (authoritative) server of {zone} and check `dns.zone`")
    )]
    NotAuthoritative {
        server: String,
        zone: String,
        detail: String,
    },

    #[error("{server} refused the {what} (zone {zone})")]
    #[diagnostic(
        code(pgdeploy::dns::refused),
        help("allow the key on the server (BIND: `update-policy` or `allow-update {{ key ...; }}` in the zone) and check `dns.zone`")
    )]
    Refused {
        server: String,
        zone: String,
        what: String,
    },

    #[error("the records of {name} changed on {server} between read and update (prerequisite failed: {rcode})")]
    #[diagnostic(
        code(pgdeploy::dns::prerequisite_failed),
        help("another process (another pgdeploy run?) changed the records; re-read them and plan again")
    )]
    PrerequisiteFailed {
        server: String,
        name: String,
        rcode: String,
    },

    #[error("{server} answered {rcode} to the {what}")]
    #[diagnostic(
        code(pgdeploy::dns::server_error),
        help("see the server's log for details")
    )]
    Server {
        server: String,
        what: String,
        rcode: String,
    },

    #[error("DNS protocol error with {server}: {detail}")]
    #[diagnostic(code(pgdeploy::dns::protocol))]
    Protocol { server: String, detail: String },

    #[error("HTTP request to {url} failed: {detail}")]
    #[diagnostic(
        code(pgdeploy::dns::http),
        help("check `dns.server` (the dyndns2 base URL) and that the service is reachable")
    )]
    Http { url: String, detail: String },

    #[error("dyndns2 update of {hostname} at {url}: {code}: {meaning}")]
    #[diagnostic(code(pgdeploy::dns::dyndns2), help("{help}"))]
    Dyndns2 {
        url: String,
        hostname: String,
        code: String,
        meaning: String,
        help: String,
    },
}

impl DnsError {
    /// True when a guarded update failed because the record set changed since it was read.
    pub fn is_prerequisite_failure(&self) -> bool {
        matches!(self, DnsError::PrerequisiteFailed { .. })
    }
}
