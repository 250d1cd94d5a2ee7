//! The pure part: what records should change, given what is published and what is healthy.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

/// The A/AAAA records of one name: the addresses and their TTL (None when there are none, or when
/// the provider cannot tell).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordSet {
    pub addrs: BTreeSet<IpAddr>,
    pub ttl: Option<u32>,
}

impl RecordSet {
    pub fn new(addrs: impl IntoIterator<Item = IpAddr>, ttl: Option<u32>) -> Self {
        RecordSet {
            addrs: addrs.into_iter().collect(),
            ttl,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
    pub fn v4(&self) -> BTreeSet<IpAddr> {
        self.addrs.iter().filter(|a| a.is_ipv4()).copied().collect()
    }
    pub fn v6(&self) -> BTreeSet<IpAddr> {
        self.addrs.iter().filter(|a| a.is_ipv6()).copied().collect()
    }
}

impl fmt::Display for RecordSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.addrs.is_empty() {
            return write!(f, "(no records)");
        }
        let list: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        write!(f, "{}", list.join(", "))?;
        if let Some(t) = self.ttl {
            write!(f, " (ttl {t})")?;
        }
        Ok(())
    }
}

/// What to change. An empty plan means: send nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsPlan {
    pub add: Vec<IpAddr>,
    pub remove: Vec<IpAddr>,
    /// `(old, new)` when the TTL of the kept records must change.
    pub ttl_change: Option<(u32, u32)>,
    /// The TTL new records get.
    pub ttl: u32,
    pub warnings: Vec<String>,
}

impl DnsPlan {
    /// True when nothing has to be sent.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.ttl_change.is_none()
    }

    /// The record set after the plan is applied to `current`.
    pub fn desired(&self, current: &RecordSet) -> RecordSet {
        if self.is_empty() {
            return current.clone();
        }
        let mut addrs = current.addrs.clone();
        for a in &self.remove {
            addrs.remove(a);
        }
        addrs.extend(self.add.iter().copied());
        RecordSet {
            addrs,
            ttl: Some(self.ttl),
        }
    }
}

impl fmt::Display for DnsPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(f, "no change");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !first {
                writeln!(f)?;
            }
            first = false;
            Ok(())
        };
        for a in &self.add {
            sep(f)?;
            write!(f, "+ {} {a} (ttl {})", rtype(a), self.ttl)?;
        }
        for a in &self.remove {
            sep(f)?;
            write!(f, "- {} {a}", rtype(a))?;
        }
        if let Some((old, new)) = self.ttl_change {
            sep(f)?;
            write!(f, "~ ttl {old} -> {new}")?;
        }
        Ok(())
    }
}

fn rtype(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "A"
    } else {
        "AAAA"
    }
}

/// Plan the records of the name.
///
/// - the desired set is the healthy HAProxy addresses (`healthy`; `all` is every HAProxy address
///   of the inventory, used to explain removals);
/// - when no host is healthy nothing changes (an empty record set is never published), with a
///   warning;
/// - an unchanged set with the same TTL gives an empty plan.
pub fn plan(current: &RecordSet, healthy: &[IpAddr], all: &[IpAddr], ttl: u32) -> DnsPlan {
    let healthy: BTreeSet<IpAddr> = healthy.iter().copied().collect();
    let all: BTreeSet<IpAddr> = all.iter().copied().collect();
    let mut warnings = Vec::new();

    if healthy.is_empty() {
        warnings.push(format!(
            "no HAProxy host passed its health check; leaving the records as they are ({current})"
        ));
        return DnsPlan {
            ttl,
            warnings,
            ..DnsPlan::default()
        };
    }
    for h in healthy.difference(&all) {
        warnings.push(format!(
            "{h} is healthy but is not an HAProxy address of the inventory; publishing it anyway"
        ));
    }

    let add: Vec<IpAddr> = healthy.difference(&current.addrs).copied().collect();
    let remove: Vec<IpAddr> = current.addrs.difference(&healthy).copied().collect();
    for r in &remove {
        if !all.contains(r) {
            warnings.push(format!(
                "{r} is published but is not an HAProxy address of the inventory; removing it"
            ));
        }
    }
    let down = all.difference(&healthy).count();
    if down > 0 {
        warnings.push(format!(
            "{down} of {} HAProxy address(es) failed the health check and are not published",
            all.len()
        ));
    }

    let ttl_change = match current.ttl {
        Some(old) if old != ttl && !current.addrs.is_disjoint(&healthy) => Some((old, ttl)),
        _ => None,
    };
    DnsPlan {
        add,
        remove,
        ttl_change,
        ttl,
        warnings,
    }
}
