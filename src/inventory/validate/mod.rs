//! Semantic validation of a parsed inventory: every problem at once, each pointing at the
//! offending value when it is written in the file.
//!
//! The checks are plain functions over the typed [`Inventory`]; positions come from the
//! untyped tree of the same text (by path), so a defaulted setting (absent from the file)
//! simply has no snippet.
//!
//! [`validate`] runs one check per inventory section, each in its own file as methods on the
//! shared [`Checker`]: [`cluster`], [`postgres`] (and per-host parameters), [`patroni`], [`ssh`],
//! [`packages`], [`hosts`] (`groups`), [`ports`], [`dns`], [`catalog`] (`users`, `databases`) and [`backup`]; [`address`] holds the address
//! syntax they share.

mod address;
mod backup;
pub mod catalog;
mod cluster;
mod dns;
mod hosts;
mod packages;
mod patroni;
mod ports;
mod postgres;
mod ssh;

use super::diag::Problem;
use super::tree::{Kind, Node, Pos, Seg};
use super::{Inventory, Warning};

pub use address::{check_address, is_valid_host_name};
pub use cluster::is_valid_cluster_name;
pub use dns::{fqdn, in_zone, is_valid_fqdn, parse_dns_server, DNS_PROVIDERS, TSIG_ALGORITHMS};
pub(crate) use hosts::empty_group;
pub use patroni::patroni_timing_ok;
pub use postgres::{
    is_valid_parameter_name, is_valid_postgres_version, postgres_major, MANAGED_PARAMETERS,
};
pub use ssh::{is_valid_user_name, parse_jump_host, JumpHost};

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Checker<'a> {
    tree: &'a Node,
    text: &'a str,
    file: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

/// Validate (and normalize: DNS names get their trailing dot) a parsed inventory. Returns all
/// errors and all warnings.
pub(crate) fn validate(
    inv: &mut Inventory,
    tree: &Node,
    text: &str,
    file: &str,
) -> (Vec<Problem>, Vec<Warning>) {
    if let Some(dns) = inv.dns.as_mut() {
        dns.name = fqdn(&dns.name);
        dns.zone = fqdn(&dns.zone);
    }
    let mut c = Checker {
        tree,
        text,
        file,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    c.cluster(inv);
    c.postgres(inv);
    c.patroni(inv);
    c.ssh(inv);
    c.packages(inv);
    c.groups(inv);
    c.ports(inv);
    c.dns(inv);
    c.catalog(inv);
    c.backup(inv);
    (c.problems, c.warnings)
}

impl<'a> Checker<'a> {
    /// Position of the value at `path` when it is written in the file (else its key).
    fn exact(&self, path: &[Seg<'_>]) -> Option<Pos> {
        match self.tree.get(path) {
            Some(n) => match n.kind {
                Kind::Map(_) | Kind::Null => self.tree.key_pos(path).or(n.pos),
                _ => n
                    .pos
                    .filter(|p| p.len > 0)
                    .or_else(|| self.tree.key_pos(path)),
            },
            None => None,
        }
    }

    /// Position of the key at `path` (for "this setting must go" problems).
    fn key(&self, path: &[Seg<'_>]) -> Option<Pos> {
        self.tree.key_pos(path).or_else(|| self.exact(path))
    }

    /// Best position: the value, else the nearest written ancestor.
    fn near(&self, path: &[Seg<'_>]) -> Option<Pos> {
        self.tree.best_pos(path)
    }

    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn warn(&mut self, pos: Option<Pos>, message: String) {
        let text = match pos {
            Some(p) => {
                let before = self.text.get(..p.offset).unwrap_or(self.text);
                let line = before.matches('\n').count() + 1;
                let col = before
                    .rsplit('\n')
                    .next()
                    .map(|l| l.chars().count())
                    .unwrap_or(0)
                    + 1;
                format!("{}:{line}:{col}: {message}", self.file)
            }
            None => format!("{}: {message}", self.file),
        };
        self.warnings.push(Warning(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Problems (messages) and warnings for an inventory given as text.
    pub(super) fn check(text: &str) -> (Vec<String>, Vec<String>) {
        match crate::inventory::load_str(text, "t.yaml", std::path::Path::new(".")) {
            Ok((_, w)) => (Vec::new(), w.into_iter().map(|w| w.0).collect()),
            Err(r) => match r.downcast_ref::<crate::inventory::InventoryError>() {
                Some(e) => (
                    e.problems().iter().map(|p| p.message.clone()).collect(),
                    Vec::new(),
                ),
                None => (vec![r.to_string()], Vec::new()),
            },
        }
    }

    pub(super) const GROUPS_COLOCATED: &str =
        "groups:\n  etcd: [{name: a, address: 192.0.2.1}]\n  \
        patroni: [{name: a, address: 192.0.2.1}, {name: b, address: 192.0.2.2}]\n  \
        haproxy: [{name: a, address: 192.0.2.1}]\n";

    #[test]
    fn every_problem_is_collected() {
        let text = "cluster: {name: X}\npostgres: {version: '15', port: 0}\n\
            patroni: {ttl: 1}\nssh: {connect_timeout: 0}\ngroups: {}\n";
        let (errors, _) = check(text);
        assert_eq!(errors.len(), 8, "{errors:#?}");
    }

    #[test]
    fn env_var_names() {
        assert!(is_env_var_name("PGDEPLOY_TSIG"));
        assert!(!is_env_var_name("1X"));
        assert!(!is_env_var_name("A-B"));
    }
}
