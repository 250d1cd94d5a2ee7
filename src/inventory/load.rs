//! Reading an inventory: YAML syntax and type errors as located, helpful problems, then
//! semantic validation.

use std::path::{Path, PathBuf};

use serde_saphyr::{Error as YamlError, MessageFormatter, UserMessageFormatter};

use super::diag::{InventoryError, Problem};
use super::tree::{Kind, Node, Pos, Seg};
use super::validate;
use super::{Group, Inventory, Warning};

/// Load, default and validate an inventory file. Errors are miette reports that name the file
/// (as given), line and column with a snippet, and list every semantic problem at once; a
/// report can be downcast to [`InventoryError`] for its problems. Nothing touches any host.
pub fn load(path: &Path) -> miette::Result<(Inventory, Vec<Warning>)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_string(),
            _ => e.to_string(),
        };
        miette::miette!(
            help = "pass the path of an inventory YAML file (see inventory/production.yaml)",
            "cannot read inventory {}: {why}",
            path.display()
        )
    })?;
    // Absolute from here on: every path derived from it (bundle, keys, state) may be handed
    // to another program that runs in another directory (apt, ssh-keygen).
    let base_dir = absolute_dir(path);
    let (mut inv, warnings) = load_str(&text, &path.display().to_string(), &base_dir)?;
    inv.path = path.to_path_buf();
    Ok((inv, warnings))
}

/// Like [`load`], from text already in memory. `file_name` is only used in messages (give it
/// as the user wrote it); relative paths in the inventory resolve against `base_dir`.
pub fn load_str(
    text: &str,
    file_name: &str,
    base_dir: &Path,
) -> miette::Result<(Inventory, Vec<Warning>)> {
    let fail = |problems: Vec<Problem>| {
        miette::Report::new(InventoryError::new(file_name, text, problems))
    };
    let tree = Node::parse(text);
    if matches!(tree.as_ref().map(|t| &t.kind), Some(Kind::Null)) {
        return Err(fail(vec![Problem::new("the inventory is empty").help(
            "describe the cluster: `cluster`, `groups` (etcd, patroni, haproxy hosts) and the \
             optional sections; inventory/production.yaml is a commented example",
        )]));
    }
    let mut inv: Inventory = match serde_saphyr::from_str(text) {
        Ok(inv) => inv,
        Err(e) => return Err(fail(vec![parse_problem(&e, text, tree.as_ref())])),
    };
    inv.base_dir = base_dir.to_path_buf();
    release_defaults(&mut inv, tree.as_ref());
    let own_name = Path::new(file_name)
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(file_name));
    inv.path = base_dir.join(own_name);
    let tree = tree.unwrap_or(Node {
        pos: None,
        kind: Kind::Null,
    });
    let (problems, warnings) = validate::validate(&mut inv, &tree, text, file_name);
    if problems.is_empty() {
        Ok((inv, warnings))
    } else {
        Err(fail(problems))
    }
}

/// The directory of `path` as an absolute path (the current directory for a bare file name).
fn absolute_dir(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&parent)
        .or_else(|_| std::path::absolute(&parent))
        .unwrap_or(parent)
}

/// Settings whose default depends on the Debian release, when the file does not give them:
/// `postgres.version` and Patroni's timings.
fn release_defaults(inv: &mut Inventory, tree: Option<&Node>) {
    let written = |path: &[&str]| {
        let segs: Vec<Seg<'_>> = path.iter().map(|k| Seg::Key(k)).collect();
        tree.is_some_and(|t| t.get(&segs).is_some())
    };
    inv.platform_written = written(&["platform"]);
    let p = inv.platform;
    if !written(&["postgres", "version"]) {
        inv.postgres.version = p.default_postgres().to_string();
    }
    let t = p.default_patroni_timings();
    if !written(&["patroni", "ttl"]) {
        inv.patroni.ttl = t.ttl;
    }
    if !written(&["patroni", "loop_wait"]) {
        inv.patroni.loop_wait = t.loop_wait;
    }
    if !written(&["patroni", "retry_timeout"]) {
        inv.patroni.retry_timeout = t.retry_timeout;
    }
}

/// `groups.etcd[0].address` from path segments.
pub(crate) fn join_path(segs: &[String]) -> String {
    let mut out = String::new();
    for s in segs {
        if !s.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

fn innermost(e: &YamlError) -> &YamlError {
    match e.without_snippet() {
        YamlError::AliasError { error, .. } => innermost(error),
        other => other,
    }
}

/// Keys whose values are secrets: never quote their line in a report.
pub(crate) fn secret_like(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "password",
        "passwd",
        "passphrase",
        "token",
        "private",
    ]
    .iter()
    .any(|w| k.contains(w))
        && !k.ends_with("_file")
        && !k.ends_with("_env")
}

/// The closest candidate to `word`, when it is close enough to be a plausible typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&w, c), strsim::jaro_winkler(&w, c), *c))
        .filter(|(d, jw, c)| *d <= (c.len() / 3).max(2) || *jw >= 0.88)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}

fn backticked(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("`{s}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn parse_problem(e: &YamlError, text: &str, tree: Option<&Node>) -> Problem {
    let inner = innermost(e);
    let pos = e
        .location()
        .or_else(|| inner.location())
        .and_then(|l| Pos::from_location(&l, text));
    let path = pos.and_then(|p| tree.and_then(|t| t.path_at(p.offset)));
    // The section holding the offending key (the path without its last segment).
    let section = path
        .as_ref()
        .map(|p| join_path(&p[..p.len().saturating_sub(1)]));
    let full = path.as_ref().map(|p| join_path(p));
    let value_text = pos
        .and_then(|p| text.get(p.offset..p.offset + p.len))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();

    // A key written with no value (`haproxy:` and nothing under it).
    let null_at = path.as_ref().and_then(|p| {
        let segs: Vec<Seg<'_>> = p
            .iter()
            .map(
                |s| match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                    Some(i) => i.parse().map(Seg::Index).unwrap_or(Seg::Key(s)),
                    None => Seg::Key(s),
                },
            )
            .collect();
        let t = tree?;
        matches!(t.get(&segs)?.kind, Kind::Null).then(|| t.key_pos(&segs))
    });
    if let Some(key_pos) = null_at {
        let group = match full.as_deref() {
            Some("groups.etcd") => Some(Group::Etcd),
            Some("groups.patroni") => Some(Group::Patroni),
            Some("groups.haproxy") => Some(Group::Haproxy),
            _ => None,
        };
        if let Some(g) = group {
            let (message, help) = validate::empty_group(g);
            return Problem::new(message).label(key_pos, "empty").help(help);
        }
        let what = full.clone().unwrap_or_default();
        return Problem::new(format!("`{what}` has no value"))
            .label(key_pos, "no value")
            .help(format!(
                "give `{what}` a value, or remove the key to use the default"
            ));
    }

    match inner {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let where_ = match section.as_deref() {
                Some("") | None => "at the top level".to_string(),
                Some(s) => format!("in `{s}`"),
            };
            let mut help = match nearest(field, expected) {
                Some(best) => format!("did you mean `{best}`? "),
                None => String::new(),
            };
            help.push_str(&format!("valid keys here: {}", backticked(expected)));
            if secret_like(field) {
                // Do not quote the line: it holds a secret.
                let line = pos.map(|p| line_of(text, p.offset)).unwrap_or(0);
                return Problem::new(format!(
                    "unknown key `{field}` {where_} (line {line}): secrets are never written in \
                     the inventory"
                ))
                .help(format!(
                    "remove it and keep the secret outside the inventory: in a file \
                     (`secret_file`, mode 0600) or an environment variable (`secret_env`); {help}"
                ));
            }
            Problem::new(format!("unknown key `{field}` {where_}"))
                .label(pos, "unknown key")
                .help(help)
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let what = full
                .map(|f| format!("`{f}`"))
                .unwrap_or("this setting".into());
            let mut help = match nearest(variant, expected) {
                Some(best) => format!("did you mean `{best}`? "),
                None => String::new(),
            };
            help.push_str(&format!("valid values: {}", backticked(expected)));
            Problem::new(format!("`{variant}` is not a valid value for {what}"))
                .label(pos, "unknown value")
                .help(help)
        }
        YamlError::SerdeMissingField { field, .. } => {
            let where_ = match section.as_deref() {
                Some("") | None => "at the top level".to_string(),
                Some(s) => format!("in `{s}`"),
            };
            Problem::new(format!("missing required key `{field}` {where_}"))
                .label(pos, format!("`{field}` is required here"))
                .help(missing_help(field))
        }
        YamlError::InvalidScalar { ty, .. } => {
            let what = full
                .clone()
                .map(|f| format!("`{f}`"))
                .unwrap_or("this value".into());
            let is_port = full.as_deref().is_some_and(|f| f.ends_with("port"));
            let (expect, help) = match *ty {
                "u16" if is_port => ("a port number", "write a whole number between 1 and 65535"),
                "u8" | "u16" | "u32" | "u64" | "usize" => (
                    "a whole number",
                    "write a whole number (0 or more) without quotes or units",
                ),
                "i8" | "i16" | "i32" | "i64" | "isize" => (
                    "a whole number",
                    "write a whole number without quotes or units",
                ),
                "bool" => ("true or false", "write `true` or `false`"),
                "f32" | "f64" => ("a number", "write a number such as 1.5"),
                _ => (
                    "of the right type",
                    "check the value against inventory/production.yaml",
                ),
            };
            let label = if ty.starts_with('u') && value_text.starts_with('-') {
                "negative".to_string()
            } else if is_port && value_text.parse::<u64>().is_ok() {
                "above 65535".to_string()
            } else {
                format!("not {expect}")
            };
            Problem::new(format!("{what} must be {expect}, not `{value_text}`"))
                .label(pos, label)
                .help(help)
        }
        other => {
            let msg = UserMessageFormatter.format_message(other).into_owned();
            if msg.contains("untagged enum ParamValue") {
                let what = full
                    .map(|f| format!("`{f}`"))
                    .unwrap_or("a parameter".into());
                return Problem::new(format!(
                    "{what} must be a single value (text, number or boolean)"
                ))
                .label(pos, "not a single value")
                .help(
                    "write PostgreSQL parameters as in postgresql.conf, e.g. `shared_buffers: \
                     1GB`; a list is one quoted text: `'pg_stat_statements,auto_explain'`",
                );
            }
            if let YamlError::SerdeInvalidType { expected, .. } = other {
                if let Some(f) = &full {
                    return Problem::new(format!("`{f}` has the wrong type: {msg}"))
                        .label(pos, format!("expected {expected}"))
                        .help("compare with the same setting in inventory/production.yaml");
                }
            }
            let help = if msg.contains("tab") {
                "indent with spaces: YAML does not allow tabs for indentation"
            } else {
                "fix the YAML syntax at this place (indentation, quotes, brackets)"
            };
            Problem::new(format!("invalid YAML: {msg}"))
                .label(pos, "here")
                .help(help)
        }
    }
}

fn missing_help(field: &str) -> String {
    match field {
        "cluster" => "add `cluster: {name: <name>}`; the name becomes Patroni's scope".into(),
        "name" => "every entry needs a `name` (host name, or the cluster's name)".into(),
        "groups" => {
            "add `groups:` with the `etcd`, `patroni` and `haproxy` hosts (name and address each)"
                .into()
        }
        "address" => {
            "every host needs an `address`: the IP address or DNS name pgdeploy connects to".into()
        }
        "zone" | "server" | "key_name" => {
            format!("add `{field}` (see the dns section of inventory/production.yaml)")
        }
        other => format!("add `{other}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_key_suggestions() {
        let keys = [
            "restapi_port",
            "ttl",
            "loop_wait",
            "retry_timeout",
            "maximum_lag_on_failover",
        ];
        assert_eq!(nearest("restapi_prot", &keys), Some("restapi_port"));
        assert_eq!(nearest("loopwait", &keys), Some("loop_wait"));
        assert_eq!(nearest("TTL", &keys), Some("ttl"));
        assert_eq!(nearest("completely_different", &keys), None);
    }

    #[test]
    fn secret_like_keys() {
        assert!(secret_like("secret"));
        assert!(secret_like("Password"));
        assert!(!secret_like("secret_file"));
        assert!(!secret_like("secret_env"));
        assert!(!secret_like("address"));
    }

    #[test]
    fn paths_join() {
        let p: Vec<String> = ["groups", "etcd", "[0]", "address"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(join_path(&p), "groups.etcd[0].address");
    }
}
