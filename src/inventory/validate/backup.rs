//! `backup`: the pgBackRest settings. They end up in configuration files and systemd units,
//! so each is checked for what those files accept.

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

/// A systemd calendar expression as pgdeploy accepts it: one line of the characters such
/// expressions use (systemd checks the rest when the timer loads).
pub fn is_calendar(s: &str) -> bool {
    !s.trim().is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " *-:/.,~".contains(c))
}

/// A pgBackRest size: digits with an optional unit (KiB, MiB, GiB, TiB; KB, MB, GB, TB).
pub fn is_size(s: &str) -> bool {
    let digits = s.chars().take_while(|c| c.is_ascii_digit()).count();
    let unit = &s[digits..];
    digits > 0 && ["", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB"].contains(&unit)
}

impl Checker<'_> {
    pub(super) fn backup(&mut self, inv: &Inventory) {
        let b = &inv.backup;
        let at = |k: &'static str| [Seg::Key("backup"), Seg::Key(k)];
        for (key, value) in [
            ("full_schedule", &b.full_schedule),
            ("diff_schedule", &b.diff_schedule),
            ("incr_schedule", &b.incr_schedule),
            ("drill_schedule", &b.drill_schedule),
        ] {
            if let Some(v) = value.as_deref().filter(|v| !is_calendar(v)) {
                self.push(
                    Problem::new(format!("`backup.{key}` is not a calendar expression: {v:?}"))
                        .label(self.exact(&at(key)), "not a schedule")
                        .help("write a systemd calendar expression, e.g. \"Sun *-*-* 01:00:00\" (see systemd.time(7)), or null for none"),
                );
            }
        }
        let repo = &b.repo_path;
        let path_ok = repo.starts_with('/')
            && repo.len() > 1
            && repo
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
        if !path_ok {
            self.push(
                Problem::new(format!("`backup.repo_path` is not a usable directory: {repo:?}"))
                    .label(self.exact(&at("repo_path")), "not an absolute path")
                    .help("give an absolute path of letters, digits, `-`, `_` and `.`, e.g. /var/lib/pgbackrest"),
            );
        }
        if b.retention_full == 0 {
            self.push(
                Problem::new("`backup.retention_full` is 0: every full backup would expire")
                    .label(self.exact(&at("retention_full")), "must be at least 1")
                    .help("keep at least 1 full backup; 2 lets a restore go back past the newest"),
            );
        }
        if !(1..=3600).contains(&b.archive_timeout) {
            self.push(
                Problem::new(format!(
                    "`backup.archive_timeout` is {}: WAL would wait without limit or be switched too often",
                    b.archive_timeout
                ))
                .label(self.exact(&at("archive_timeout")), "1-3600 seconds")
                .help("give the most seconds of writes you accept to lose with every database host, e.g. 60"),
            );
        }
        if !is_size(&b.archive_queue_max) {
            self.push(
                Problem::new(format!(
                    "`backup.archive_queue_max` is not a size: {:?}",
                    b.archive_queue_max
                ))
                .label(self.exact(&at("archive_queue_max")), "not a size")
                .help("write a size such as 4GiB or 512MiB"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, GROUPS_COLOCATED};
    use super::*;

    #[test]
    fn schedules_sizes_and_paths() {
        assert!(is_calendar("Sun *-*-* 01:00:00") && is_calendar("Mon..Sat *-*-* 01:00:00"));
        assert!(!is_calendar("daily\nExecStart=/bin/sh") && !is_calendar(""));
        assert!(is_size("4GiB") && is_size("512MiB") && !is_size("4 GiB") && !is_size("GiB"));
        let text = format!(
            "cluster: {{name: c}}\nbackup: {{full_schedule: \"x\\ny\", repo_path: rel, retention_full: 0, archive_timeout: 0, archive_queue_max: lots}}\n{GROUPS_COLOCATED}"
        );
        let (errors, _) = check(&text);
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }
}
