//! Views of the journal for people and programs: the table of runs, one run's details, and
//! both as JSON.

use super::{ChangeResult, Outcome, RunDetail, RunSummary};
use serde_json::Value;

/// `2024-06-01T15:30:12.345Z` -> `2024-06-01 15:30:12`.
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replacen('T', " ", 1)
}

/// A duration for people: `0.4 s`, `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn duration_text(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

fn result_text(r: &RunSummary) -> String {
    match (&r.result, &r.error) {
        (Outcome::Failed, Some(e)) => format!("failed: {e}"),
        (o, _) => o.word().to_string(),
    }
}

fn changes_text(r: &RunSummary) -> String {
    if r.failed_changes > 0 {
        format!("{} ({} failed)", r.changes, r.failed_changes)
    } else {
        r.changes.to_string()
    }
}

/// `key=value` pairs of a run's arguments.
fn args_text(args: &Value) -> String {
    let Value::Object(m) = args else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in m {
        let v = match v {
            Value::Bool(false) | Value::Null => continue,
            Value::Bool(true) => {
                parts.push(k.clone());
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    parts.join(" ")
}

/// The table of runs, oldest first.
pub fn list_text(runs: &[RunSummary]) -> String {
    let header = [
        "RUN",
        "STARTED (UTC)",
        "USER",
        "COMMAND",
        "DURATION",
        "CHANGES",
        "RESULT",
    ];
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                short_time(&r.started),
                r.user.clone(),
                r.command.clone(),
                r.seconds.map(duration_text).unwrap_or_else(|| "-".into()),
                changes_text(r),
                result_text(r),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        line.trim_end().to_string() + "\n"
    };
    let mut t = fmt_row(header.to_vec());
    for row in &rows {
        t.push_str(&fmt_row(row.iter().map(String::as_str).collect()));
    }
    t
}

/// One run: its facts, then its changes per phase and host.
pub fn detail_text(d: &RunDetail) -> String {
    let r = &d.run;
    let mut t = format!("run {}: {} {}\n", r.id, r.command, result_text(r));
    t.push_str(&format!(
        "  started    {} UTC by {} (pgdeploy {})\n",
        short_time(&r.started),
        r.user,
        r.version
    ));
    t.push_str(&format!("  inventory  {}\n", r.inventory));
    let args = args_text(&r.args);
    if !args.is_empty() {
        t.push_str(&format!("  arguments  {args}\n"));
    }
    t.push_str(&format!(
        "  duration   {}\n  changes    {}\n",
        r.seconds
            .map(duration_text)
            .unwrap_or_else(|| match r.result {
                Outcome::Running => "(still running)".into(),
                _ => "unknown (no end recorded)".into(),
            }),
        changes_text(r)
    ));
    if d.phases.is_empty() {
        t.push_str("\nNo changes were made.\n");
    }
    for p in &d.phases {
        t.push_str(&format!("\nphase {}\n", p.phase));
        for h in &p.hosts {
            t.push_str(&format!("  {}\n", h.host));
            for c in &h.changes {
                let word = match c.result {
                    ChangeResult::Ok => "ok",
                    ChangeResult::Error => "ERROR",
                };
                t.push_str(&format!(
                    "    {word:<5} {:>8}  {}\n",
                    duration_text(c.seconds),
                    c.change
                ));
                if let Some(e) = &c.error {
                    for l in e.lines().filter(|l| !l.trim().is_empty()) {
                        t.push_str(&format!("                    {l}\n"));
                    }
                }
            }
        }
    }
    t
}

/// The summaries as JSON (for `--format json`).
pub fn list_json(runs: &[RunSummary]) -> String {
    serde_json::to_string_pretty(runs).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// One run as JSON.
pub fn detail_json(d: &RunDetail) -> String {
    serde_json::to_string_pretty(d).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_text(0.04), "0.0 s");
        assert_eq!(duration_text(12.34), "12.3 s");
        assert_eq!(duration_text(245.0), "4 min 05 s");
        assert_eq!(duration_text(3725.0), "1 h 02 min");
    }
}
