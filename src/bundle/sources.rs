//! apt sources: parse deb822 (`*.sources`) and one-line (`*.list`) entries, keep only the Debian
//! archive entries for one release, and render a private deb822 file.

use super::BundleError;
use std::path::{Path, PathBuf};

/// Components of the Debian archive.
const DEBIAN_COMPONENTS: [&str; 4] = ["main", "contrib", "non-free", "non-free-firmware"];

/// One apt source entry (a deb822 stanza, or one line of a `.list` file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// `deb` and/or `deb-src`.
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `Enabled: no` turns a stanza off.
    pub enabled: bool,
    /// Every other field, in order (`Signed-By`, `Architectures`, `Trusted`, ...). Values may span
    /// several lines (an inline `Signed-By` key).
    pub options: Vec<(String, String)>,
    /// Where the entry came from ("FILE:LINE"), for messages.
    pub origin: String,
}

impl SourceEntry {
    /// The value of an option, compared case-insensitively.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Render as one deb822 stanza (no trailing blank line).
    pub fn to_deb822(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("Types: {}\n", self.types.join(" ")));
        out.push_str(&format!("URIs: {}\n", self.uris.join(" ")));
        out.push_str(&format!("Suites: {}\n", self.suites.join(" ")));
        if !self.components.is_empty() {
            out.push_str(&format!("Components: {}\n", self.components.join(" ")));
        }
        if !self.enabled {
            out.push_str("Enabled: no\n");
        }
        for (k, v) in &self.options {
            let mut lines = v.lines();
            out.push_str(&format!("{k}: {}\n", lines.next().unwrap_or("")));
            for l in lines {
                if l.trim().is_empty() {
                    out.push_str(" .\n");
                } else {
                    out.push_str(&format!(" {l}\n"));
                }
            }
        }
        out
    }
}

/// Parse deb822 text (the format of `/etc/apt/sources.list.d/*.sources`).
pub fn parse_deb822(text: &str, origin: &str) -> Result<Vec<SourceEntry>, BundleError> {
    let mut entries = Vec::new();
    // (start line, fields)
    let mut cur: Option<(usize, Vec<(String, String)>)> = None;
    let finish = |cur: &mut Option<(usize, Vec<(String, String)>)>,
                  entries: &mut Vec<SourceEntry>|
     -> Result<(), BundleError> {
        if let Some((line, fields)) = cur.take() {
            entries.push(stanza_to_entry(fields, &format!("{origin}:{line}"))?);
        }
        Ok(())
    };
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        if raw.starts_with('#') {
            continue;
        }
        if raw.trim().is_empty() {
            finish(&mut cur, &mut entries)?;
            continue;
        }
        if raw.starts_with(' ') || raw.starts_with('\t') {
            // continuation of the previous field
            let Some((_, fields)) = cur.as_mut() else {
                return Err(BundleError::SourceSyntax {
                    origin: format!("{origin}:{lineno}"),
                    message: "continuation line outside a stanza".into(),
                });
            };
            let Some((_, v)) = fields.last_mut() else {
                return Err(BundleError::SourceSyntax {
                    origin: format!("{origin}:{lineno}"),
                    message: "continuation line before any field".into(),
                });
            };
            let t = raw.trim();
            v.push('\n');
            if t != "." {
                v.push_str(t);
            }
            continue;
        }
        let Some((k, v)) = raw.split_once(':') else {
            return Err(BundleError::SourceSyntax {
                origin: format!("{origin}:{lineno}"),
                message: format!("expected `Field: value`, found {raw:?}"),
            });
        };
        let entry = cur.get_or_insert_with(|| (lineno, Vec::new()));
        entry.1.push((k.trim().to_string(), v.trim().to_string()));
    }
    finish(&mut cur, &mut entries)?;
    Ok(entries)
}

fn words(v: &str) -> Vec<String> {
    v.split_whitespace().map(str::to_string).collect()
}

fn stanza_to_entry(
    fields: Vec<(String, String)>,
    origin: &str,
) -> Result<SourceEntry, BundleError> {
    let mut e = SourceEntry {
        types: Vec::new(),
        uris: Vec::new(),
        suites: Vec::new(),
        components: Vec::new(),
        enabled: true,
        options: Vec::new(),
        origin: origin.to_string(),
    };
    for (k, v) in fields {
        match k.to_ascii_lowercase().as_str() {
            "types" => e.types = words(&v),
            "uris" => e.uris = words(&v),
            "suites" => e.suites = words(&v),
            "components" => e.components = words(&v),
            "enabled" => e.enabled = !matches!(v.trim(), "no" | "false" | "0"),
            _ => e.options.push((k, v)),
        }
    }
    for (name, empty) in [
        ("Types", e.types.is_empty()),
        ("URIs", e.uris.is_empty()),
        ("Suites", e.suites.is_empty()),
    ] {
        if empty {
            return Err(BundleError::SourceSyntax {
                origin: origin.to_string(),
                message: format!("stanza has no `{name}` field"),
            });
        }
    }
    Ok(e)
}

/// Map a one-line option name to its deb822 field name.
fn deb822_option_name(k: &str) -> String {
    match k {
        "arch" => "Architectures".into(),
        "lang" => "Languages".into(),
        "target" => "Targets".into(),
        "pdiffs" => "PDiffs".into(),
        "by-hash" => "By-Hash".into(),
        "allow-insecure" => "Allow-Insecure".into(),
        "allow-weak" => "Allow-Weak".into(),
        "allow-downgrade-to-insecure" => "Allow-Downgrade-To-Insecure".into(),
        "trusted" => "Trusted".into(),
        "signed-by" => "Signed-By".into(),
        "check-valid-until" => "Check-Valid-Until".into(),
        "valid-until-min" => "Valid-Until-Min".into(),
        "valid-until-max" => "Valid-Until-Max".into(),
        "check-date" => "Check-Date".into(),
        "date-max-future" => "Date-Max-Future".into(),
        "inrelease-path" => "InRelease-Path".into(),
        other => other.into(),
    }
}

/// Parse one-line sources (the format of `/etc/apt/sources.list` and `*.list`).
pub fn parse_one_line(text: &str, origin: &str) -> Result<Vec<SourceEntry>, BundleError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", i + 1);
        let err = |message: String| BundleError::SourceSyntax {
            origin: at.clone(),
            message,
        };
        let (ty, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| err(format!("incomplete source line {line:?}")))?;
        if ty != "deb" && ty != "deb-src" {
            return Err(err(format!(
                "unknown source type {ty:?} (expected deb or deb-src)"
            )));
        }
        let mut rest = rest.trim_start();
        let mut options = Vec::new();
        if let Some(after) = rest.strip_prefix('[') {
            let (opts, tail) = after
                .split_once(']')
                .ok_or_else(|| err("unterminated `[` option list".into()))?;
            for o in opts.split_whitespace() {
                let (k, v) = o
                    .split_once('=')
                    .ok_or_else(|| err(format!("option {o:?} is not key=value")))?;
                options.push((deb822_option_name(k), v.replace(',', " ")));
            }
            rest = tail.trim_start();
        }
        let mut parts = rest.split_whitespace();
        let uri = parts
            .next()
            .ok_or_else(|| err("source line has no URI".into()))?;
        let suite = parts
            .next()
            .ok_or_else(|| err("source line has no suite".into()))?;
        let components: Vec<String> = parts.map(str::to_string).collect();
        if components.is_empty() && !suite.ends_with('/') {
            return Err(err(format!(
                "suite {suite:?} needs components (or a trailing `/` for a flat repository)"
            )));
        }
        out.push(SourceEntry {
            types: vec![ty.to_string()],
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components,
            enabled: true,
            options,
            origin: at.clone(),
        });
    }
    Ok(out)
}

/// Parse one source given as text in the inventory: one-line entries if the first meaningful line
/// starts with `deb`/`deb-src`, deb822 otherwise.
pub fn parse_any(text: &str, origin: &str) -> Result<Vec<SourceEntry>, BundleError> {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with("deb ") || first.starts_with("deb-src ") || first.starts_with("deb\t") {
        parse_one_line(text, origin)
    } else {
        parse_deb822(text, origin)
    }
}

/// The files apt reads from an `/etc/apt`-like directory: `sources.list`, then
/// `sources.list.d/*.list` and `*.sources` in name order (apt ignores other names).
pub fn source_files(etc_apt: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let main = etc_apt.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    if let Ok(rd) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut parts: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                    return false;
                };
                let valid_chars = name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                valid_chars && (name.ends_with(".list") || name.ends_with(".sources"))
            })
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
}

/// Read every source entry configured under `etc_apt` (e.g. `/etc/apt`).
pub fn read_system_sources(etc_apt: &Path) -> Result<Vec<SourceEntry>, BundleError> {
    let mut out = Vec::new();
    for f in source_files(etc_apt) {
        let text = std::fs::read_to_string(&f).map_err(|source| BundleError::Io {
            what: "read apt sources".into(),
            path: f.clone(),
            source,
        })?;
        let origin = f.display().to_string();
        if f.extension().is_some_and(|e| e == "sources") {
            out.extend(parse_deb822(&text, &origin)?);
        } else {
            out.extend(parse_one_line(&text, &origin)?);
        }
    }
    Ok(out)
}

fn is_debian_suite(suite: &str, codename: &str) -> bool {
    suite == codename
        || suite == format!("{codename}-updates")
        || suite == format!("{codename}-security")
        || suite == format!("{codename}/updates")
}

/// A URI looks like the Debian archive (or a mirror or snapshot of it) when one of its path
/// segments starts with `debian` (`/debian`, `/debian-security`, `/archive/debian/<date>`).
fn is_debian_uri(uri: &str) -> bool {
    let path = match uri.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map(|(_, p)| p).unwrap_or(""),
        None => uri.split_once(':').map(|(_, p)| p).unwrap_or(uri),
    };
    path.split('/').any(|s| s.starts_with("debian"))
}

/// `Signed-By` absent (global keyrings) or naming a Debian archive keyring file.
fn is_debian_signed_by(entry: &SourceEntry) -> bool {
    match entry.option("Signed-By") {
        None => true,
        Some(v) => {
            let v = v.trim();
            !v.contains("BEGIN PGP") && v.split_whitespace().all(|k| k.contains("debian-archive"))
        }
    }
}

/// Debian codenames whose archive entries can stand for another release's (same mirror).
const KNOWN_CODENAMES: [&str; 5] = ["bullseye", "bookworm", "trixie", "forky", "duke"];

/// `suite` of another Debian release, as the same suite of `codename`: `bookworm-security` ->
/// `trixie-security`. None for suites that are not a release's main, updates or security
/// suite.
fn retarget_suite(suite: &str, codename: &str) -> Option<String> {
    KNOWN_CODENAMES.iter().find_map(|known| {
        let rest = suite.strip_prefix(known)?;
        match rest {
            "" | "-updates" | "-security" => Some(format!("{codename}{rest}")),
            "/updates" => Some(format!("{codename}-security")),
            _ => None,
        }
    })
}

/// The Debian archive entries for `codename`: those the configuration names for it, or else
/// the entries of the release this machine is configured for, pointed at `codename`'s suites
/// (a Debian mirror serves every release, so a Debian 12 machine builds a Debian 13 bundle
/// from the mirror it already uses).
pub fn debian_entries_for(entries: &[SourceEntry], codename: &str) -> Vec<SourceEntry> {
    let exact = filter_debian(entries, codename);
    if !exact.is_empty() {
        return exact;
    }
    let moved: Vec<SourceEntry> = entries
        .iter()
        .map(|e| {
            let mut suites: Vec<String> = e
                .suites
                .iter()
                .filter_map(|s| retarget_suite(s, codename))
                .collect();
            suites.dedup();
            SourceEntry {
                suites,
                ..e.clone()
            }
        })
        .filter(|e| !e.suites.is_empty())
        .collect();
    filter_debian(&moved, codename)
}

/// Keep only enabled binary (`deb`) entries of the Debian archive for `codename` (its release,
/// `-updates` and `-security` suites; not backports), restricted to Debian's components.
/// Third-party repositories are dropped: other suites, other components, URIs outside a
/// `debian*` path, or a `Signed-By` key that is not a Debian archive keyring.
pub fn filter_debian(entries: &[SourceEntry], codename: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for e in entries {
        if !e.enabled || !e.types.iter().any(|t| t == "deb") || !is_debian_signed_by(e) {
            continue;
        }
        let uris: Vec<String> = e
            .uris
            .iter()
            .filter(|u| is_debian_uri(u))
            .cloned()
            .collect();
        let suites: Vec<String> = e
            .suites
            .iter()
            .filter(|s| is_debian_suite(s, codename))
            .cloned()
            .collect();
        let components: Vec<String> = e
            .components
            .iter()
            .filter(|c| DEBIAN_COMPONENTS.contains(&c.as_str()))
            .cloned()
            .collect();
        if uris.is_empty() || suites.is_empty() || components.is_empty() {
            continue;
        }
        out.push(SourceEntry {
            types: vec!["deb".into()],
            uris,
            suites,
            components,
            enabled: true,
            options: e.options.clone(),
            origin: e.origin.clone(),
        });
    }
    out
}

/// Keep only enabled `deb` entries (for sources the user listed explicitly).
pub fn binary_entries(entries: &[SourceEntry]) -> Vec<SourceEntry> {
    entries
        .iter()
        .filter(|e| e.enabled && e.types.iter().any(|t| t == "deb"))
        .map(|e| SourceEntry {
            types: vec!["deb".into()],
            ..e.clone()
        })
        .collect()
}

/// Render entries as a deb822 file.
pub fn render_deb822(entries: &[SourceEntry]) -> String {
    entries
        .iter()
        .map(|e| e.to_deb822())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_releases_entries_serve_the_wanted_release() {
        let e = parse_deb822(DEB822, "debian.sources").unwrap();
        let d = debian_entries_for(&e, "trixie");
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].uris, ["http://mirror.example/debian"]);
        assert_eq!(d[0].suites, ["trixie", "trixie-updates"]);
        assert_eq!(d[1].uris, ["http://mirror.example/debian-security"]);
        assert_eq!(d[1].suites, ["trixie-security"]);
        // The configured release itself is taken as configured.
        let b = debian_entries_for(&e, "bookworm");
        assert_eq!(b[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            retarget_suite("bullseye/updates", "trixie").as_deref(),
            Some("trixie-security")
        );
        assert_eq!(retarget_suite("bookworm-backports", "trixie"), None);
        assert_eq!(retarget_suite("nodistro", "trixie"), None);
    }

    const DEB822: &str = "\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: https://deb.nodesource.example/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/nodesource.gpg

Types: deb
URIs: https://vendor.example/linux/debian
Suites: bookworm
Components: stable

Types: deb
URIs: https://php.example/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBF...
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://mirror.example/debian
Suites: trixie
Components: main
Enabled: no
";

    #[test]
    fn deb822_parses_fields_and_multiline_values() {
        let e = parse_deb822(DEB822, "debian.sources").unwrap();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[0].suites,
            ["bookworm", "bookworm-updates", "bookworm-backports"]
        );
        assert_eq!(e[0].origin, "debian.sources:1");
        assert_eq!(e[1].types, ["deb", "deb-src"]);
        assert_eq!(e[1].components, ["main", "non-free-firmware"]);
        assert_eq!(e[2].option("architectures"), Some("amd64"));
        let key = e[4].option("Signed-By").unwrap();
        assert!(key.starts_with("\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF"));
        assert!(!e[5].enabled);
    }

    #[test]
    fn deb822_filter_keeps_only_debian_release_suites() {
        let e = parse_deb822(DEB822, "debian.sources").unwrap();
        let d = filter_debian(&e, "bookworm");
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].uris, ["http://mirror.example/debian"]);
        assert_eq!(d[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(d[1].types, ["deb"]);
        assert_eq!(d[1].suites, ["bookworm-security"]);
        assert_eq!(
            d[1].option("Signed-By"),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
    }

    #[test]
    fn one_line_parses_options_and_filters_third_party() {
        let text = "\
# comment
deb http://mirror.example/debian bookworm main contrib non-free-firmware
deb-src http://mirror.example/debian bookworm main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian-security bookworm-security main # trailing
deb https://packages.cloud.example/apt cloud-sdk-bookworm main
deb [signed-by=/usr/share/keyrings/pgdg.gpg] http://apt.pg.example/pub/repos/apt bookworm-pgdg main
deb https://php.example/php/ bookworm main
deb [signed-by=/etc/apt/keyrings/vendor.asc] https://vendor.example/debian bookworm main
deb http://mirror.example/debian bookworm-backports main
deb http://mirror.example/debian bullseye main
";
        let e = parse_one_line(text, "sources.list").unwrap();
        assert_eq!(e.len(), 9);
        assert_eq!(e[0].origin, "sources.list:2");
        assert_eq!(e[2].option("Architectures"), Some("amd64 arm64"));
        assert_eq!(e[2].components, ["main"]);
        let d = filter_debian(&e, "bookworm");
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].components, ["main", "contrib", "non-free-firmware"]);
        assert_eq!(d[1].uris, ["http://mirror.example/debian-security"]);
        let rendered = render_deb822(&d);
        assert!(rendered.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
        assert!(rendered.contains("Architectures: amd64 arm64\n"));
        // the rendering parses back to the same entries
        let back = parse_deb822(&rendered, "x").unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].suites, d[0].suites);
        assert_eq!(back[1].options, d[1].options);
    }

    #[test]
    fn snapshot_uri_is_debian() {
        assert!(is_debian_uri(
            "http://snapshot.example/archive/debian/20250520T000000Z"
        ));
        assert!(is_debian_uri("file:/srv/mirror/debian"));
        assert!(!is_debian_uri("https://packages.cloud.example/apt"));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = parse_one_line("deb http://x/debian\n", "a.list").unwrap_err();
        assert!(err.to_string().contains("a.list:1"), "{err}");
        let err = parse_deb822("Types: deb\nURIs: http://x/debian\n", "b.sources").unwrap_err();
        assert!(err.to_string().contains("b.sources:1"), "{err}");
        assert!(err.to_string().contains("Suites"), "{err}");
        let err = parse_one_line("rpm http://x/ y z\n", "c.list").unwrap_err();
        assert!(err.to_string().contains("rpm"), "{err}");
    }

    #[test]
    fn inline_key_round_trips() {
        let e = parse_deb822(DEB822, "d").unwrap();
        let text = e[4].to_deb822();
        let back = parse_deb822(&text, "x").unwrap();
        assert_eq!(back[0].options, e[4].options);
    }

    #[test]
    fn parse_any_detects_format() {
        let e = parse_any("deb http://m.example/debian bookworm main", "inv").unwrap();
        assert_eq!(e[0].suites, ["bookworm"]);
        let e = parse_any(
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n",
            "inv",
        )
        .unwrap();
        assert_eq!(e[0].components, ["main"]);
    }

    #[test]
    fn system_files_skip_disabled_names() {
        let d = tempfile::tempdir().unwrap();
        let parts = d.path().join("sources.list.d");
        std::fs::create_dir_all(&parts).unwrap();
        std::fs::write(
            parts.join("debian.sources"),
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\nComponents: main\n",
        )
        .unwrap();
        std::fs::write(
            parts.join("google.list.disabled-by-farm"),
            "deb https://g.example/apt cloud-sdk-bookworm main\n",
        )
        .unwrap();
        std::fs::write(
            parts.join("extra.list"),
            "deb https://g.example/apt cloud-sdk-bookworm main\n",
        )
        .unwrap();
        let all = read_system_sources(d.path()).unwrap();
        assert_eq!(all.len(), 2);
        let deb = filter_debian(&all, "bookworm");
        assert_eq!(deb.len(), 1);
        assert_eq!(deb[0].uris, ["http://m.example/debian"]);
    }
}
