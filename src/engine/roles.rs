//! Roles are data: `roles/<role>/role.yaml` plus minijinja templates, embedded in the binary and
//! overridable from a directory (`--roles-dir`).

use include_dir::{include_dir, Dir};
use miette::{miette, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

static EMBEDDED_ROLES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/roles");
static EMBEDDED_TEMPLATES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/templates");

/// Which hosts a role applies to.
pub type HostSelector = String;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// `all`, or the groups whose hosts get the role, comma-separated (`etcd`, `patroni`,
    /// `haproxy`, `backup`).
    pub hosts: HostSelector,
    /// The role applies only when the inventory has hosts in this group (e.g. `backup`: the
    /// database hosts get pgBackRest only when there is a repository).
    #[serde(default)]
    pub requires: Option<String>,
    #[serde(default)]
    pub packages: Vec<PackageSpec>,
    #[serde(default)]
    pub directories: Vec<DirSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub sysctls: Vec<SysctlSpec>,
    #[serde(default)]
    pub units: Vec<UnitSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PackageSpec {
    pub name: String,
    /// Exact Debian version (rendered as a template), or none for "any installed version".
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub hold: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    pub path: String,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    #[serde(default = "dir_mode")]
    pub mode: String,
    #[serde(default)]
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    /// Template path (resolved in the role's override dir, then `templates/`).
    #[serde(default)]
    pub template: Option<String>,
    /// Literal content (rendered as a template too).
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    #[serde(default = "file_mode")]
    pub mode: String,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub validate: Option<String>,
    /// Only for hosts in this group (within the role's hosts).
    #[serde(default)]
    pub when_group: Option<String>,
    /// Values the template (and the path) see as `item`: one template for several files.
    #[serde(default)]
    pub item: BTreeMap<String, String>,
    /// Files of a role with the same `pair` name are replaced together: each is staged next
    /// to its place and all are renamed in one command (a certificate and its key).
    #[serde(default)]
    pub pair: Option<String>,
    /// `before_packages`: written by the packages phase before packages are installed (e.g.
    /// settings that stop a package from creating defaults).
    #[serde(default)]
    pub stage: Option<Stage>,
}

/// When a file or directory is put in place.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// In the packages phase, before apt runs.
    BeforePackages,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SysctlSpec {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    #[default]
    Started,
    Stopped,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnChange {
    #[default]
    Restart,
    Reload,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    pub name: String,
    /// Unit file written to /etc/systemd/system/NAME (or a drop-in path given in `path`).
    #[serde(default)]
    pub template: Option<String>,
    /// Where the unit file goes (default /etc/systemd/system/NAME).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub state: UnitState,
    #[serde(default)]
    pub on_change: OnChange,
    /// Values the template sees as `item` (one template for several units).
    #[serde(default)]
    pub item: BTreeMap<String, String>,
    /// A template that renders to `true` or `false`: when false, the unit is kept disabled
    /// and stopped, and its file is not written (e.g. a timer whose schedule is not set).
    #[serde(default)]
    pub when: Option<String>,
}

fn root() -> String {
    "root".into()
}
fn dir_mode() -> String {
    "0755".into()
}
fn file_mode() -> String {
    "0644".into()
}
fn yes() -> bool {
    true
}

/// Parse an octal mode string like "0644".
pub fn parse_mode(s: &str) -> Result<u32> {
    let t = s.trim_start_matches("0o");
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| miette!("invalid file mode {s:?}: write it in octal, like \"0644\""))
}

/// Where roles and templates come from.
#[derive(Debug, Clone, Default)]
pub struct RoleSource {
    /// Override directory: `DIR/<role>/role.yaml`, templates in `DIR/<role>/` or `DIR/templates/`.
    pub override_dir: Option<PathBuf>,
    /// Roles already read: a command plans each host's roles in several phases, and parsing
    /// the YAML again each time was a quarter of a `check`'s own CPU.
    parsed: Arc<Mutex<HashMap<String, Option<Arc<RoleSpec>>>>>,
}

impl RoleSource {
    pub fn new(override_dir: Option<PathBuf>) -> Self {
        RoleSource {
            override_dir,
            parsed: Arc::default(),
        }
    }

    /// Load a role by name (override dir first), read once per source. `Ok(None)` if no such
    /// role.
    pub fn role(&self, name: &str) -> Result<Option<Arc<RoleSpec>>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = parsed.get(name) {
            return Ok(known.clone());
        }
        let spec = self.read_role(name)?.map(Arc::new);
        parsed.insert(name.to_string(), spec.clone());
        Ok(spec)
    }

    fn read_role(&self, name: &str) -> Result<Option<RoleSpec>> {
        let (text, origin) = match self.read_override(&format!("{name}/role.yaml"))? {
            Some((t, p)) => (t, p.display().to_string()),
            None => match EMBEDDED_ROLES.get_file(format!("{name}/role.yaml")) {
                Some(f) => (
                    String::from_utf8_lossy(f.contents()).into_owned(),
                    format!("roles/{name}/role.yaml (built in)"),
                ),
                None => return Ok(None),
            },
        };
        let spec: RoleSpec =
            serde_saphyr::from_str(&text).map_err(|e| miette!("role file {origin}: {e}"))?;
        Ok(Some(spec))
    }

    /// Names of the roles available (built in plus override dir).
    pub fn role_names(&self) -> Vec<String> {
        let mut names: Vec<String> = EMBEDDED_ROLES
            .dirs()
            .filter_map(|d| d.path().file_name()?.to_str().map(String::from))
            .collect();
        if let Some(dir) = &self.override_dir {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.path().join("role.yaml").is_file() {
                        if let Some(n) = e.file_name().to_str() {
                            names.push(n.to_string());
                        }
                    }
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    /// Load a template's source by path, for `role`.
    pub fn template(&self, role: &str, path: &str) -> Result<String> {
        if let Some((t, _)) = self.read_override(&format!("{role}/{path}"))? {
            return Ok(t);
        }
        if let Some((t, _)) = self.read_override(&format!("templates/{path}"))? {
            return Ok(t);
        }
        match EMBEDDED_TEMPLATES.get_file(path) {
            Some(f) => Ok(String::from_utf8_lossy(f.contents()).into_owned()),
            None => Err(miette!(
                "role {role}: template {path:?} not found (looked in the roles directory and the built-in templates/)"
            )),
        }
    }

    fn read_override(&self, rel: &str) -> Result<Option<(String, PathBuf)>> {
        let Some(dir) = &self.override_dir else {
            return Ok(None);
        };
        let p = dir.join(rel);
        if !p.is_file() {
            return Ok(None);
        }
        let t =
            std::fs::read_to_string(&p).map_err(|e| miette!("cannot read {}: {e}", p.display()))?;
        Ok(Some((t, p)))
    }
}

/// Render a template string with a context; errors name the template and line.
pub fn render(name: &str, source: &str, ctx: &minijinja::Value) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // Config files are not HTML or JSON documents: never escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_template(name, source)
        .map_err(|e| template_error(name, e))?;
    let t = env
        .get_template(name)
        .map_err(|e| template_error(name, e))?;
    t.render(ctx).map_err(|e| template_error(name, e))
}

fn template_error(name: &str, e: minijinja::Error) -> miette::Report {
    let line = e.line().map(|l| format!(" line {l}")).unwrap_or_default();
    let mut msg = format!("template {name}{line}: {}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(&format!(": {d}"));
    }
    miette!(
        help = "fix the template or the inventory value it uses",
        "{msg}"
    )
}

/// Whether `dir` looks like a roles override directory.
pub fn is_roles_dir(dir: &Path) -> bool {
    dir.is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("600").unwrap(), 0o600);
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn strict_undefined_is_an_error_naming_the_template() {
        let e = render("t.j2", "x={{ nope }}", &minijinja::Value::from(())).unwrap_err();
        assert!(e.to_string().contains("t.j2"), "{e}");
    }

    #[test]
    fn builtin_common_role_loads() {
        let src = RoleSource::default();
        let r = src.role("common").unwrap().expect("common role");
        assert_eq!(r.hosts, "all");
        for f in &r.files {
            if let Some(t) = &f.template {
                src.template("common", t).unwrap();
            }
        }
    }
}
