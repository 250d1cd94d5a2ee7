//! Facts: read-only probes. Each probe is a shell command plus a pure parser of its output, so
//! parsers are tested from fixtures ("this output in, this fact out").

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::shell::sh_quote;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PathKind {
    Absent,
    File,
    Dir,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathFact {
    pub kind: PathKind,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    pub sha256: Option<String>,
    /// Content, fetched only for files whose hash differs from the desired one.
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
}

impl PathFact {
    pub fn absent() -> Self {
        PathFact {
            kind: PathKind::Absent,
            mode: 0,
            owner: String::new(),
            group: String::new(),
            sha256: None,
            content: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitFact {
    /// `systemctl is-enabled` output (enabled, disabled, static, not-found, ...).
    pub enabled: String,
    /// `systemctl is-active` output (active, inactive, failed, ...).
    pub active: String,
}

/// Everything the generic role steps know about one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostFacts {
    pub paths: BTreeMap<String, PathFact>,
    /// Installed packages: name -> version.
    pub packages: BTreeMap<String, String>,
    pub held: BTreeSet<String>,
    pub units: BTreeMap<String, UnitFact>,
    pub sysctls: BTreeMap<String, String>,
    /// The output of other phases' read-only commands that ran in the same round trip, by tag
    /// (see [`with_extras`]; while phases are planned together).
    #[serde(skip)]
    pub extra: BTreeMap<String, String>,
    /// The control machine's clock (Unix seconds) just before and after that round trip.
    #[serde(skip)]
    pub probed_at: Option<(f64, f64)>,
    /// Kernel parameters that can be set at runtime (containers keep /proc/sys read-only).
    pub sysctl_writable: BTreeSet<String>,
    /// Units with a restart still owed from an earlier, interrupted run.
    pub pending: BTreeSet<String>,
    /// Whether systemctl exists on the host.
    pub has_systemd: bool,
}

/// Where pending-restart markers live on hosts.
pub const PENDING_DIR: &str = "/var/lib/pgdeploy/pending";

/// What to probe on one host.
#[derive(Debug, Clone, Default)]
pub struct ProbeRequest {
    pub paths: Vec<String>,
    pub packages: Vec<String>,
    pub units: Vec<String>,
    /// Those of `units` wanted disabled: for them, no enabling symlink is answer enough.
    pub disabled_units: Vec<String>,
    pub sysctls: Vec<String>,
}

impl ProbeRequest {
    /// Whether facts probed for `self` also answer `other`.
    pub fn covers(&self, other: &ProbeRequest) -> bool {
        fn all(have: &[String], want: &[String]) -> bool {
            want.iter().all(|w| have.contains(w))
        }
        all(&self.paths, &other.paths)
            && all(&self.packages, &other.packages)
            && all(&self.units, &other.units)
            && other
                .units
                .iter()
                .all(|u| !self.disabled_units.contains(u) || other.disabled_units.contains(u))
            && all(&self.sysctls, &other.sysctls)
    }
}

/// One batched command for all of a host's facts (one round trip).
pub fn probe_command(req: &ProbeRequest) -> String {
    // Few processes: one stat and one sha256sum for every path, one systemctl for every unit
    // (the hosts may share a few cores; forks dominate the probe's cost).
    let mut s = String::from("export LC_ALL=C\n");
    if !req.paths.is_empty() {
        let paths: Vec<String> = req.paths.iter().map(|p| sh_quote(p)).collect();
        let paths = paths.join(" ");
        s.push_str(&format!(
            "echo '@STAT'; stat -c '%F|%a|%U|%G|%n' -- {paths} 2>/dev/null\n\
             echo '@SHA'; sha256sum -- {paths} 2>/dev/null\n"
        ));
    }
    if !req.packages.is_empty() {
        s.push_str(
            // Every installed package, not only those asked: dpkg-query reads its whole
            // database either way, and the packages phase needs them all (one dpkg-query per
            // host). A hold is dpkg's selection state (`apt-mark hold` sets it): the first
            // letter of Status-Abbrev, so no `apt-mark showhold`, which loads apt's whole cache.
            "echo '@PKG'; dpkg-query -W -f='${Package}|${Version}|${db:Status-Abbrev}\\n' 2>/dev/null\n",
        );
    }
    s.push_str("echo '@SYSTEMD'; command -v systemctl >/dev/null 2>&1 && echo yes || echo no\n");
    if !req.units.is_empty() {
        s.push_str(&units_command(req));
    }
    for (i, k) in req.sysctls.iter().enumerate() {
        s.push_str(&format!(
            // Read by the shell itself, as `sysctl -n` prints it (one line).
            "echo '@S {i}'; {{ read -r v && echo \"$v\"; }} < /proc/sys/{p} 2>/dev/null || echo '@UNSET'; \
             test -w /proc/sys/{p} && echo '@RW' || true\n",
            p = sh_quote(&k.replace('.', "/"))
        ));
    }
    // A glob, not `ls`: one process less on every host.
    s.push_str(&format!(
        "echo '@PENDING'; for f in {PENDING_DIR}/*; do [ -e \"$f\" ] && echo \"${{f##*/}}\"; done; true\n"
    ));
    s.push_str("echo '@END'\n");
    s
}

/// The units' part of the probe. `systemctl show` asks systemd for every property of each unit
/// and works out each unit file's state from every unit directory: 25 ms of a host's CPU on
/// Debian 13. Instead: what is loaded and active, in one `list-units` (a unit it does not list
/// is not loaded, so inactive); enabled is an enabling symlink in /etc/systemd/system (what
/// `systemctl enable` makes from WantedBy= and RequiredBy=), masked a link to /dev/null. Only
/// a unit wanted enabled that has no such symlink asks systemd for its unit file state (it
/// may be static, an alias, or not installed), in the same round trip. The units active are
/// left in `$pgdeploy_active` (" a.service b.service "), for the extras after the probe.
fn units_command(req: &ProbeRequest) -> String {
    let list = |disabled: bool| {
        req.units
            .iter()
            .filter(|u| req.disabled_units.contains(u) == disabled)
            .map(|u| sh_quote(u))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let all: Vec<String> = req.units.iter().map(|u| sh_quote(u)).collect();
    format!(
        "pgdeploy_units=$(systemctl list-units --all --full --plain --no-legend --no-pager -- {all} 2>/dev/null)\n\
         echo '@UNITS'; printf '%s\\n' \"$pgdeploy_units\"\n\
         pgdeploy_active=' '; while read -r n _ a _; do [ \"$a\" = active ] && pgdeploy_active=\"$pgdeploy_active$n \"; done <<PGDEPLOY_UNITS\n\
         $pgdeploy_units\nPGDEPLOY_UNITS\n\
         echo '@LINKS'; pgdeploy_masked() {{ [ /etc/systemd/system/\"$1\" -ef /dev/null ] || [ /run/systemd/system/\"$1\" -ef /dev/null ]; }}\n\
         pgdeploy_linked() {{ for p in /etc/systemd/system/*.wants/\"$1\" /etc/systemd/system/*.requires/\"$1\"; do [ -L \"$p\" ] && return 0; done; return 1; }}\n\
         ask=; for u in {enable}; do if pgdeploy_masked \"$u\"; then echo \"masked $u\"; elif pgdeploy_linked \"$u\"; then echo \"linked $u\"; else ask=\"$ask $u\"; fi; done\n\
         for u in {disable}; do if pgdeploy_masked \"$u\"; then echo \"masked $u\"; elif pgdeploy_linked \"$u\"; then echo \"linked $u\"; fi; done\n\
         [ -z \"$ask\" ] || {{ echo '@UFILE'; systemctl show -p Id -p UnitFileState -- $ask 2>/dev/null || true; }}\n",
        all = all.join(" "),
        enable = list(false),
        disable = list(true),
    )
}

const EXTRA: &str = "@@PGDEPLOY-EXTRA ";

/// `cmd` followed by each `(tag, command)` of `extras`, each in its own subshell and after a
/// marker line, so that one round trip answers several phases.
pub fn with_extras(cmd: &str, extras: &[(String, String)]) -> String {
    let mut s = cmd.to_string();
    for (tag, c) in extras {
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&format!(
            "echo {}\n( {c}\n) 2>/dev/null\n",
            sh_quote(&format!("{EXTRA}{tag}"))
        ));
    }
    s
}

/// Pure: split the output of [`with_extras`] into the main command's and each extra's.
pub fn split_extras(out: &str) -> (String, BTreeMap<String, String>) {
    let mut main = String::new();
    let mut extra = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in out.split_inclusive('\n') {
        if let Some(tag) = line.strip_prefix(EXTRA) {
            if let Some((t, b)) = current.take() {
                extra.insert(t, b);
            }
            current = Some((tag.trim_end().to_string(), String::new()));
        } else if let Some((_, b)) = &mut current {
            b.push_str(line);
        } else {
            main.push_str(line);
        }
    }
    if let Some((t, b)) = current {
        extra.insert(t, b);
    }
    (main, extra)
}

/// Parse the output of [`probe_command`].
pub fn parse_probe(req: &ProbeRequest, out: &str) -> Result<HostFacts, String> {
    let mut facts = HostFacts::default();
    let mut section: Option<(String, usize)> = None;
    let mut buf: Vec<&str> = Vec::new();
    let mut saw_end = false;
    // Batched path facts: stat line and hash by path.
    let mut stat: BTreeMap<String, String> = BTreeMap::new();
    let mut sha: BTreeMap<String, String> = BTreeMap::new();
    // Units: active state of those loaded, unit file state of those known.
    let mut active_of: BTreeMap<String, String> = BTreeMap::new();
    let mut file_state_of: BTreeMap<String, String> = BTreeMap::new();

    let mut flush = |section: &Option<(String, usize)>,
                     buf: &mut Vec<&str>,
                     facts: &mut HostFacts|
     -> Result<(), String> {
        let Some((kind, idx)) = section else {
            buf.clear();
            return Ok(());
        };
        match kind.as_str() {
            "PKG" => {
                for l in buf.iter() {
                    let parts: Vec<&str> = l.split('|').collect();
                    let [name, version, status] = parts[..] else {
                        continue;
                    };
                    // Selection (h: hold) then state (i: installed).
                    if status.starts_with('h') {
                        facts.held.insert(name.to_string());
                    }
                    if status.starts_with("ii") || status.starts_with("hi") {
                        facts.packages.insert(name.to_string(), version.to_string());
                    }
                }
            }
            "SYSTEMD" => {
                facts.has_systemd = buf.first().map(|l| l.trim() == "yes").unwrap_or(false)
            }
            "S" => {
                let key = req.sysctls.get(*idx).ok_or_else(|| {
                    format!("probe output names sysctl #{idx}, which was not asked")
                })?;
                if buf.iter().any(|l| l.trim() == "@RW") {
                    facts.sysctl_writable.insert(key.clone());
                }
                let v: Vec<&str> = buf.iter().copied().filter(|l| l.trim() != "@RW").collect();
                let v = v.join(" ");
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                if v != "@UNSET" {
                    facts.sysctls.insert(key.clone(), v);
                }
            }
            "STAT" => {
                for l in buf.iter() {
                    let parts: Vec<&str> = l.splitn(5, '|').collect();
                    if let [kind, mode, user, group, name] = parts[..] {
                        stat.insert(name.to_string(), format!("{kind}|{mode}|{user}|{group}"));
                    }
                }
            }
            "SHA" => {
                for l in buf.iter() {
                    if let Some((hash, name)) = l.split_once("  ") {
                        sha.insert(name.to_string(), hash.to_string());
                    }
                }
            }
            "UNITS" => {
                // UNIT LOAD ACTIVE SUB DESCRIPTION, for the units loaded.
                for l in buf.iter() {
                    let mut it = l.split_whitespace();
                    if let (Some(unit), Some(_load), Some(active)) =
                        (it.next(), it.next(), it.next())
                    {
                        active_of.insert(unit.to_string(), active.to_string());
                    }
                }
            }
            "LINKS" => {
                for l in buf.iter() {
                    if let Some((state, unit)) = l.trim().split_once(' ') {
                        let state = if state == "linked" { "enabled" } else { state };
                        file_state_of.insert(unit.to_string(), state.to_string());
                    }
                }
            }
            "UFILE" => {
                // Id=UNIT then UnitFileState=STATE, one blank-line separated block per unit.
                for block in buf.split(|l| l.trim().is_empty()) {
                    let get = |k: &str| {
                        block
                            .iter()
                            .find_map(|l| l.trim().strip_prefix(k)?.strip_prefix('='))
                            .map(str::to_string)
                    };
                    if let (Some(id), Some(state)) = (get("Id"), get("UnitFileState")) {
                        if !state.is_empty() {
                            file_state_of.insert(id, state);
                        }
                    }
                }
            }
            "PENDING" => {
                for l in buf.iter() {
                    let l = l.trim();
                    if !l.is_empty() {
                        facts.pending.insert(l.to_string());
                    }
                }
            }
            _ => {}
        }
        buf.clear();
        Ok(())
    };

    for line in out.lines() {
        if let Some(rest) = line.strip_prefix('@') {
            let mut it = rest.split_whitespace();
            let kind = it.next().unwrap_or("");
            if matches!(
                kind,
                "STAT"
                    | "SHA"
                    | "PKG"
                    | "SYSTEMD"
                    | "UNITS"
                    | "LINKS"
                    | "UFILE"
                    | "S"
                    | "PENDING"
                    | "END"
            ) {
                flush(&section, &mut buf, &mut facts)?;
                if kind == "END" {
                    saw_end = true;
                    section = None;
                    continue;
                }
                let idx = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                section = Some((kind.to_string(), idx));
                continue;
            }
        }
        buf.push(line);
    }
    flush(&section, &mut buf, &mut facts)?;
    if !saw_end {
        return Err("probe output ended early (no end marker): the command was cut off".into());
    }
    for p in &req.paths {
        let lines: Vec<&str> = match stat.get(p) {
            Some(st) => vec![st, sha.get(p).map(String::as_str).unwrap_or("")],
            None => vec!["absent"],
        };
        facts.paths.insert(p.clone(), parse_path_fact(&lines)?);
    }
    for u in &req.units {
        // Wanted disabled and not linked: disabled (or static, or not installed: the same to
        // the plan). Otherwise what systemd said, or nothing: no such unit.
        let enabled = match file_state_of.get(u) {
            Some(s) => s.clone(),
            None if req.disabled_units.contains(u) => "disabled".into(),
            None => "not-found".into(),
        };
        let active = active_of
            .get(u)
            .cloned()
            .unwrap_or_else(|| "inactive".into());
        facts.units.insert(u.clone(), UnitFact { enabled, active });
    }
    Ok(facts)
}

fn parse_path_fact(lines: &[&str]) -> Result<PathFact, String> {
    let first = lines.first().map(|l| l.trim()).unwrap_or("absent");
    if first == "absent" {
        return Ok(PathFact::absent());
    }
    let parts: Vec<&str> = first.split('|').collect();
    if parts.len() != 4 {
        return Err(format!("unexpected stat output: {first:?}"));
    }
    let kind = match parts[0] {
        "regular file" | "regular empty file" => PathKind::File,
        "directory" => PathKind::Dir,
        _ => PathKind::Other,
    };
    let mode = u32::from_str_radix(parts[1], 8).map_err(|_| format!("bad mode in {first:?}"))?;
    let sha256 = lines
        .get(1)
        .map(|l| l.trim().to_string())
        .filter(|s| s.len() == 64);
    Ok(PathFact {
        kind,
        mode,
        owner: parts[2].to_string(),
        group: parts[3].to_string(),
        sha256,
        content: None,
    })
}

/// Command that prints the given files base64-encoded, one `@C i` section each.
pub fn content_command(paths: &[String]) -> String {
    let mut s = String::new();
    for (i, p) in paths.iter().enumerate() {
        s.push_str(&format!(
            "echo '@C {i}'; base64 -w0 -- {} 2>/dev/null; echo\n",
            sh_quote(p)
        ));
    }
    s.push_str("echo '@END'\n");
    s
}

/// Parse [`content_command`] output into path -> content.
pub fn parse_contents(paths: &[String], out: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use base64::Engine;
    let mut map = BTreeMap::new();
    let mut cur: Option<usize> = None;
    let mut ended = false;
    for line in out.lines() {
        if let Some(n) = line.strip_prefix("@C ") {
            cur = n.trim().parse().ok();
            continue;
        }
        if line == "@END" {
            ended = true;
            break;
        }
        if let Some(i) = cur.take() {
            let p = paths.get(i).ok_or("content output names an unknown file")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line.trim())
                .map_err(|e| format!("bad base64 for {p}: {e}"))?;
            map.insert(p.clone(), bytes);
        }
    }
    if !ended {
        return Err("content output ended early".into());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ProbeRequest {
        ProbeRequest {
            paths: vec!["/etc/a".into(), "/etc/d".into(), "/etc/missing".into()],
            packages: vec!["haproxy".into(), "etcd-server".into(), "patroni".into()],
            units: vec![
                "haproxy.service".into(),
                "nope.service".into(),
                "postgresql.service".into(),
                "pgbackrest.service".into(),
                "static.service".into(),
            ],
            disabled_units: vec!["postgresql.service".into(), "pgbackrest.service".into()],
            sysctls: vec!["net.ipv4.tcp_keepalive_time".into(), "kernel.nope".into()],
        }
    }

    const SHA_A: &str = "0f343b0931126a20f133d67c2b018a3b5f6b0d2c3ab1aaf3b8bd7e3a9b5f4a00";

    /// Output of [`probe_command`] for [`req`]: every section, one path absent.
    fn out() -> String {
        format!(
            "@STAT
regular file|644|root|root|/etc/a
directory|750|postgres|postgres|/etc/d
@SHA
{SHA_A}  /etc/a
@PKG
haproxy|2.6.12-1+deb12u1|hi 
etcd-server|3.4.23-4+b6|un 
patroni|4.0.7-1|ii 
@SYSTEMD
yes
@UNITS
haproxy.service loaded active running HAProxy Load Balancer
static.service  loaded failed failed  A static unit
@LINKS
linked haproxy.service
masked pgbackrest.service
@UFILE
Id=nope.service
UnitFileState=

Id=static.service
UnitFileState=static
@S 0
60
@RW
@S 1
@UNSET
@PENDING
haproxy.service
@END
"
        )
    }

    #[test]
    fn parses_a_full_probe() {
        let f = parse_probe(&req(), &out()).unwrap();
        let a = &f.paths["/etc/a"];
        assert_eq!(a.kind, PathKind::File);
        assert_eq!(a.mode, 0o644);
        assert_eq!(a.sha256.as_deref(), Some(SHA_A));
        assert_eq!(f.paths["/etc/d"].kind, PathKind::Dir);
        assert_eq!(f.paths["/etc/d"].owner, "postgres");
        assert_eq!(f.paths["/etc/missing"].kind, PathKind::Absent);
        assert_eq!(
            f.packages.get("haproxy").map(String::as_str),
            Some("2.6.12-1+deb12u1")
        );
        assert!(
            !f.packages.contains_key("etcd-server"),
            "not-installed package is absent"
        );
        assert!(f.held.contains("haproxy"));
        assert!(!f.held.contains("patroni"), "installed, not held");
        assert_eq!(
            f.packages.get("patroni").map(String::as_str),
            Some("4.0.7-1")
        );
        assert!(f.has_systemd);
        assert_eq!(f.units["haproxy.service"].enabled, "enabled");
        assert_eq!(f.units["haproxy.service"].active, "active");
        assert_eq!(f.units["nope.service"].enabled, "not-found");
        assert_eq!(f.units["nope.service"].active, "inactive");
        // Wanted disabled, no enabling symlink: disabled, without asking systemd.
        assert_eq!(f.units["postgresql.service"].enabled, "disabled");
        assert_eq!(f.units["postgresql.service"].active, "inactive");
        assert_eq!(f.units["pgbackrest.service"].enabled, "masked");
        assert_eq!(f.units["static.service"].enabled, "static");
        assert_eq!(f.units["static.service"].active, "failed");
        assert_eq!(f.sysctls["net.ipv4.tcp_keepalive_time"], "60");
        assert!(f.sysctl_writable.contains("net.ipv4.tcp_keepalive_time"));
        assert!(!f.sysctl_writable.contains("kernel.nope"));
        assert!(!f.sysctls.contains_key("kernel.nope"));
        assert!(f.pending.contains("haproxy.service"));
    }

    #[test]
    fn parses_the_batched_probe() {
        let r = req();
        let out = format!(
            "@STAT\nregular file|644|root|root|{p0}\ndirectory|755|etcd|etcd|{p1}\n@SHA\n{h}  {p0}\n\
             @SYSTEMD\nyes\n@UNITS\n@LINKS\n@UFILE\nId=haproxy.service\nUnitFileState=disabled\n\n\
             @PENDING\n@END\n",
            p0 = r.paths[0],
            p1 = r.paths[1],
            h = "a".repeat(64)
        );
        let f = parse_probe(&r, &out).unwrap();
        assert_eq!(f.paths[&r.paths[0]].kind, PathKind::File);
        assert_eq!(
            f.paths[&r.paths[0]].sha256.as_deref(),
            Some("a".repeat(64).as_str())
        );
        assert_eq!(f.paths[&r.paths[1]].kind, PathKind::Dir);
        assert_eq!(f.paths[&r.paths[1]].owner, "etcd");
        assert_eq!(f.paths[&r.paths[2]], PathFact::absent());
        // Not loaded: inactive; not linked: systemd's unit file state.
        assert_eq!(f.units[&r.units[0]].enabled, "disabled");
        assert_eq!(f.units[&r.units[0]].active, "inactive");
        assert_eq!(f.units[&r.units[1]].enabled, "not-found");
    }

    /// The units' command asks systemd for unit file states only for units wanted enabled that
    /// have no enabling symlink (here, on a machine whose units pgdeploy never made).
    #[test]
    fn the_units_command_asks_systemd_only_about_unlinked_wanted_units() {
        let r = req();
        let cmd = units_command(&r);
        assert!(cmd.contains("list-units --all --full --plain --no-legend --no-pager -- haproxy.service nope.service postgresql.service pgbackrest.service static.service"), "{cmd}");
        assert!(
            cmd.contains("for u in haproxy.service nope.service static.service; do"),
            "{cmd}"
        );
        assert!(
            cmd.contains("for u in postgresql.service pgbackrest.service; do"),
            "{cmd}"
        );
        // Run with a systemctl that records what it is asked, and no unit linked or masked.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("asked");
        let fake = dir.path().join("systemctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$1\" in list-units) \
                 echo 'haproxy.service  loaded active running HAProxy'; \
                 echo 'static.service   loaded failed failed  Static';; esac\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "PATH={}:$PATH; {cmd}echo \"@ACTIVE[$pgdeploy_active]\"",
                dir.path().display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("@ACTIVE[ haproxy.service ]"), "{text}");
        let f = parse_probe(&r, &format!("{text}@END\n")).unwrap();
        assert_eq!(f.units["haproxy.service"].active, "active");
        assert_eq!(f.units["static.service"].active, "failed");
        let asked = std::fs::read_to_string(&log).unwrap();
        let asked: Vec<&str> = asked.lines().collect();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(asked[0].starts_with("list-units"));
        assert_eq!(
            asked[1],
            "show -p Id -p UnitFileState -- haproxy.service nope.service static.service"
        );
    }

    #[test]
    fn truncated_output_is_an_error() {
        let out = out();
        let cut = &out[..out.find("@PENDING").unwrap()];
        assert!(parse_probe(&req(), cut).is_err());
    }

    #[test]
    fn extras_ride_along_and_split_back() {
        let cmd = with_extras(
            "echo main",
            &[
                ("a".into(), "echo one; echo two".into()),
                ("b".into(), "exit 3".into()),
            ],
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (main, extra) = split_extras(&text);
        assert_eq!(main, "main\n");
        assert_eq!(extra["a"], "one\ntwo\n");
        assert_eq!(extra["b"], "");
        assert_eq!(split_extras("x\n@END\n").0, "x\n@END\n");
    }

    #[test]
    fn contents_roundtrip() {
        let paths = vec!["/a".to_string(), "/b".to_string()];
        let out = "@C 0\naGVsbG8K\n@C 1\n\n@END\n";
        let m = parse_contents(&paths, out).unwrap();
        assert_eq!(m["/a"], b"hello\n");
        assert_eq!(m["/b"], b"");
    }
}
