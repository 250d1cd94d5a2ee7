//! The run journal: a record of every `apply`, `upgrade` and `dns sync`.
//!
//! `<state dir>/journal.jsonl` holds one JSON object per line: a `start` line when a run begins
//! (before any host is contacted), a `change` line for every change made on a host (with its
//! result and duration), and an `end` line when the run ends (ok, failed, interrupted). Lines of
//! concurrent runs may interleave; each names its run. The file is opened with `O_APPEND` and
//! every line is written with one `write` call, so lines never mix. Everything recorded is
//! redacted with the run's secret values first.
//!
//! A run holds an exclusive `flock` on `<state dir>/runs/<id>.lock` while it runs: a start line
//! without an end line is "running" while that lock is held and "interrupted" otherwise (killed,
//! crashed, host lost power).
//!
//! `write` appends the lines of a run ([`Run`], [`Recorder`]); `read` parses the journal
//! and summarizes its runs ([`history`], [`select`], [`detail`]); `view` renders them
//! ([`list_text`], [`detail_text`], JSON).

mod read;
mod view;
mod write;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub use read::{
    detail, history, is_running, parse, read, select, summarize, ChangeEntry, HostDetail, Journal,
    PhaseDetail, RunDetail, RunSummary,
};
pub use view::{detail_json, detail_text, duration_text, list_json, list_text};
pub use write::{first_line, strip_ansi, Recorder, Run};

/// The journal's file name in the state directory.
pub const FILE: &str = "journal.jsonl";
/// Directory (in the state directory) of the lock files of runs in progress.
const LOCK_DIR: &str = "runs";

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Interrupted,
    /// Only in summaries: no end line yet and the run's lock is held.
    Running,
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Running => "running",
        }
    }
}

/// The result of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeResult {
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartLine {
    pub run: String,
    pub time: String,
    pub command: String,
    pub inventory: String,
    pub version: String,
    pub user: String,
    pub pid: u32,
    /// The arguments that change what the run does (`--only`, `--forks`, versions...).
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeLine {
    pub run: String,
    pub time: String,
    pub phase: String,
    pub host: String,
    /// The change's one-line summary, as `check` prints it.
    pub change: String,
    pub result: ChangeResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndLine {
    pub run: String,
    pub time: String,
    pub result: Outcome,
    /// The first line of the error that ended the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    pub changes: usize,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Start(StartLine),
    Change(ChangeLine),
    End(EndLine),
}

impl Line {
    pub fn run(&self) -> &str {
        match self {
            Line::Start(l) => &l.run,
            Line::Change(l) => &l.run,
            Line::End(l) => &l.run,
        }
    }
}

/// The journal's path in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn start(run: &str) -> String {
        format!(
            r#"{{"type":"start","run":"{run}","time":"2024-06-01T10:00:00.000Z","command":"apply","inventory":"/x/inventory.yaml","version":"0.1.0","user":"ann","pid":1,"args":{{"forks":10}}}}"#
        )
    }
    fn change(run: &str, phase: &str, host: &str, ok: bool) -> String {
        if ok {
            format!(
                r#"{{"type":"change","run":"{run}","time":"2024-06-01T10:00:01.000Z","phase":"{phase}","host":"{host}","change":"+ file /etc/a (root:root 0644)","result":"ok","seconds":0.25}}"#
            )
        } else {
            format!(
                r#"{{"type":"change","run":"{run}","time":"2024-06-01T10:00:01.000Z","phase":"{phase}","host":"{host}","change":"~ file /etc/b (root:root 0644)","result":"error","error":"h1: the new /etc/b failed validation\nline two","seconds":0.5}}"#
            )
        }
    }
    fn end(run: &str, result: &str, changes: usize) -> String {
        let err = if result == "failed" {
            r#","error":"phase common: h1: the new /etc/b failed validation""#
        } else {
            ""
        };
        format!(
            r#"{{"type":"end","run":"{run}","time":"2024-06-01T10:00:05.000Z","result":"{result}"{err},"seconds":5.0,"changes":{changes}}}"#
        )
    }

    pub(super) fn journal() -> Journal {
        let text = [
            start("aaaa1111"),
            change("aaaa1111", "common", "h0", true),
            start("bbbb2222"), // interleaved with the first run
            change("aaaa1111", "common", "h1", true),
            end("aaaa1111", "ok", 2),
            change("bbbb2222", "common", "h1", false),
            end("bbbb2222", "failed", 1),
            start("aaab3333"),
            change("aaab3333", "etcd", "h0", true),
            start("cccc4444"),
            // the last line was cut short by a crash
            r#"{"type":"change","run":"cccc4444","time":"2024-06-01T1"#.to_string(),
        ]
        .join("\n");
        parse(&text)
    }
}
