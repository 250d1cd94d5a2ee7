//! Address syntax shared by the sections: DNS labels and host names, IP literals,
//! `host[:port]`.

use std::net::{IpAddr, Ipv6Addr};

pub(super) fn is_label(l: &str, allow_underscore: bool) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_'))
}

/// A DNS host name (RFC 1123): dot-separated labels of letters, digits and `-`, at most 253
/// characters; an optional single trailing dot; the last label is not all digits.
pub fn is_valid_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.iter().all(|l| is_label(l, false))
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Check a host address: an IPv4 or IPv6 literal, or a DNS host name. `Err` says why not.
pub fn check_address(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!(
                "`{s}` is the unspecified address, not a host's address"
            ));
        }
        if ip.is_multicast() {
            return Err(format!(
                "`{s}` is a multicast address, not a host's address"
            ));
        }
        return Ok(());
    }
    if s.starts_with('[') && s.ends_with(']') {
        return Err("write an IPv6 address without brackets".into());
    }
    if s.contains(':') {
        if s.matches(':').count() == 1 {
            return Err("a port does not belong in the address (use `ssh: {port: ...}`)".into());
        }
        return Err(format!("`{s}` is not a valid IPv6 address"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` is not a valid IPv4 address"));
    }
    if !is_valid_host_name(s) {
        return Err(format!(
            "`{s}` is neither an IP address nor a valid DNS host name"
        ));
    }
    Ok(())
}

/// Canonical form of an address for comparisons (IP literals normalized, names lowercased).
pub(super) fn canonical_address(s: &str) -> String {
    match s.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// Split `host[:port]`, `[v6]:port` or a bare IPv6 literal; `default` when no port is given.
pub(super) fn split_host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("the host is missing".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after the IPv6 address".to_string())?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not a valid IPv6 address"));
        }
        let port = match after {
            "" => default,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{p}` after `]`"))?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), default));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), parse_port(p)?)),
        Some(_) => Err(format!(
            "`{s}` is not a valid IPv6 address (write `[address]:port` to give a port)"
        )),
        None => Ok((s.to_string(), default)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 is not a usable port".into()),
        Ok(n) if n <= 65535 => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is above 65535")),
        Err(_) => Err(format!("`{p}` is not a port number")),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.1",
            "fd00::21",
            "pg1",
            "pg1.example.com",
            "pg1.example.com.",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.256",
            "10.0.0",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "[fd00::1]",
            "pg1:22",
            "pg_1",
            "-pg",
            "fd00:::1",
            "host..example",
            "1.2.3.4.5",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        assert_eq!(canonical_address("FD00:0::21"), "fd00::21");
        assert_eq!(canonical_address("PG1.Example.com."), "pg1.example.com");
    }
}
