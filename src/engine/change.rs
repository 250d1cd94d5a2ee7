//! Changes: the one vocabulary shared by `check` (printed) and `apply` (executed).

use serde::Serialize;

/// What a unit change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitAction {
    DaemonReload,
    Enable,
    Disable,
    Start,
    /// Start without waiting for the unit to be up (a static etcd cluster forms only once a
    /// quorum of members started).
    StartNoBlock,
    Stop,
    Restart,
    Reload,
}

impl UnitAction {
    pub fn verb(&self) -> &'static str {
        match self {
            UnitAction::DaemonReload => "daemon-reload",
            UnitAction::Enable => "enable",
            UnitAction::Disable => "disable",
            UnitAction::Start => "start",
            UnitAction::StartNoBlock => "start --no-block",
            UnitAction::Stop => "stop",
            UnitAction::Restart => "restart",
            UnitAction::Reload => "reload",
        }
    }
}

/// One change to one host. Every change is explicit and printable.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// Create a directory, or fix its mode/owner.
    Directory {
        path: String,
        mode: u32,
        owner: String,
        group: String,
        exists: bool,
    },
    /// Write a file (create, replace content, or fix mode/owner).
    File {
        path: String,
        mode: u32,
        owner: String,
        group: String,
        /// Current content (None: the file does not exist). Skipped in JSON when secret.
        #[serde(skip)]
        old: Option<Vec<u8>>,
        /// Desired content.
        #[serde(skip)]
        new: Vec<u8>,
        /// Unified diff for display (redacted when `secret`).
        diff: String,
        /// Content differs (false: only mode/owner differ).
        content_changed: bool,
        secret: bool,
        /// Shell command run against the new file before it goes live (`{}` = temp path).
        #[serde(skip_serializing_if = "Option::is_none")]
        validate: Option<String>,
        /// Units to restart/reload when this file changes.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        notify: Vec<String>,
        /// Replaced in one rename with the other changed files of this pair.
        #[serde(skip_serializing_if = "Option::is_none")]
        pair: Option<String>,
    },
    /// Install or change the version of a package.
    Package {
        name: String,
        from: Option<String>,
        to: String,
    },
    /// Hold (or unhold) a package so unattended upgrades cannot move it.
    Hold { name: String, hold: bool },
    /// Set a kernel parameter at runtime (its persistent file is a File change).
    Sysctl {
        name: String,
        from: Option<String>,
        to: String,
    },
    /// systemd unit operation.
    Unit {
        unit: String,
        action: UnitAction,
        reason: String,
    },
    /// A command, with the reason it runs.
    Command { command: String, reason: String },
    /// Something that cannot be known until an earlier phase or step runs.
    Deferred { what: String, why: String },
    /// Copy files from the control machine to a directory on the host (streamed).
    Upload {
        dest: String,
        files: Vec<String>,
        bytes: u64,
        reason: String,
    },
}

impl Change {
    /// One-line summary (no diff).
    pub fn summary(&self) -> String {
        match self {
            Change::Directory {
                path,
                mode,
                owner,
                group,
                exists,
            } => {
                if *exists {
                    format!("~ directory {path} -> {owner}:{group} {mode:04o}")
                } else {
                    format!("+ directory {path} ({owner}:{group} {mode:04o})")
                }
            }
            Change::File {
                path,
                mode,
                owner,
                group,
                old,
                content_changed,
                secret,
                notify,
                ..
            } => {
                let what = match (old.is_some(), content_changed) {
                    (false, _) => "+ file",
                    (true, true) => "~ file",
                    (true, false) => "~ file (mode/owner only)",
                };
                let mut s = format!("{what} {path} ({owner}:{group} {mode:04o})");
                if *secret {
                    s.push_str(" [secret]");
                }
                if !notify.is_empty() {
                    s.push_str(&format!(" -> notifies {}", notify.join(", ")));
                }
                s
            }
            Change::Package { name, from, to } => match from {
                None => format!("+ package {name} {to}"),
                Some(f) => format!("~ package {name} {f} -> {to}"),
            },
            Change::Hold { name, hold } => {
                if *hold {
                    format!("~ hold package {name}")
                } else {
                    format!("~ unhold package {name}")
                }
            }
            Change::Sysctl { name, from, to } => format!(
                "~ sysctl {name} {} -> {to}",
                from.as_deref().unwrap_or("(unset)")
            ),
            Change::Unit {
                unit,
                action,
                reason,
            } => format!("! unit {} {unit} ({reason})", action.verb()),
            Change::Command { command, reason } => format!("! run `{command}` ({reason})"),
            Change::Deferred { what, why } => format!("? {what} (deferred: {why})"),
            Change::Upload {
                dest,
                files,
                bytes,
                reason,
            } => format!(
                "+ upload {} file{} ({:.1} MB) to {dest} ({reason})",
                files.len(),
                if files.len() == 1 { "" } else { "s" },
                *bytes as f64 / 1e6
            ),
        }
    }

    /// Whether this change is a deferred note rather than an action.
    pub fn is_deferred(&self) -> bool {
        matches!(self, Change::Deferred { .. })
    }
}

/// Unified diff of two texts, with secrets replaced first. Binary content is summarized.
pub fn unified_diff(path: &str, old: Option<&[u8]>, new: &[u8], secrets: &[String]) -> String {
    let (Ok(old_s), Ok(new_s)) = (
        std::str::from_utf8(old.unwrap_or(b"")),
        std::str::from_utf8(new),
    ) else {
        return format!(
            "binary content: {} -> {} bytes\n",
            old.map(|o| o.len()).unwrap_or(0),
            new.len()
        );
    };
    // Diff first, then redact the output: a changed secret still shows as a changed line.
    let diff = similar::TextDiff::from_lines(old_s, new_s);
    let from = if old.is_some() {
        format!("{path} (on host)")
    } else {
        "/dev/null".to_string()
    };
    let text = diff
        .unified_diff()
        .context_radius(3)
        .header(&from, &format!("{path} (desired)"))
        .to_string();
    redact(&text, secrets)
}

/// Replace every secret value in `text` by `<redacted>`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_redacts_secrets() {
        let d = unified_diff(
            "/etc/x",
            Some(b"password: hunter22\n"),
            b"password: s3cretvalue\n",
            &["s3cretvalue".into(), "hunter22".into()],
        );
        assert!(!d.contains("s3cretvalue"), "{d}");
        assert!(!d.contains("hunter22"), "{d}");
        assert!(d.contains("<redacted>"));
    }

    #[test]
    fn diff_of_new_file_is_from_dev_null() {
        let d = unified_diff("/etc/x", None, b"a\nb\n", &[]);
        assert!(d.starts_with("--- /dev/null"), "{d}");
        assert!(d.contains("+a\n+b\n"), "{d}");
    }

    #[test]
    fn binary_content_is_summarized() {
        let d = unified_diff("/x", Some(&[0xff, 0xfe]), &[0xff], &[]);
        assert_eq!(d, "binary content: 2 -> 1 bytes\n");
    }
}
