//! The run journal and `pgdeploy history`, through the binary, against real OpenSSH servers on
//! loopback (the engine tests' fixture: a role rooted in a temporary directory).

use crate::e2e::{bin, Out};
use crate::engine::Fixture;
use pgdeploy::journal::{self, ChangeResult, Line, Outcome};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn journal_path(f: &Fixture) -> PathBuf {
    f.dir.path().join(".pgdeploy/enginetest/journal.jsonl")
}

fn lines(f: &Fixture) -> Vec<Line> {
    let text = std::fs::read_to_string(journal_path(f)).expect("the journal exists");
    journal::parse(&text).lines
}

/// The lines of one run: its start, changes, end.
fn run_lines(all: &[Line], id: &str) -> Vec<Line> {
    all.iter().filter(|l| l.run() == id).cloned().collect()
}

fn run_ids(all: &[Line]) -> Vec<String> {
    all.iter()
        .filter_map(|l| match l {
            Line::Start(s) => Some(s.run.clone()),
            _ => None,
        })
        .collect()
}

fn end_of(all: &[Line], id: &str) -> Option<journal::EndLine> {
    all.iter().find_map(|l| match l {
        Line::End(e) if e.run == id => Some(e.clone()),
        _ => None,
    })
}

fn changes_of(all: &[Line], id: &str) -> Vec<journal::ChangeLine> {
    all.iter()
        .filter_map(|l| match l {
            Line::Change(c) if c.run == id => Some(c.clone()),
            _ => None,
        })
        .collect()
}

/// `pgdeploy history <args>` run in the fixture's directory.
fn history(f: &Fixture, args: &[&str]) -> Out {
    let o = Command::new(bin())
        .arg("history")
        .args(args)
        .current_dir(f.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn history_json(f: &Fixture) -> serde_json::Value {
    let out = history(f, &["--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    serde_json::from_str(&out.stdout).expect("history json")
}

#[test]
fn journal_records_each_run_its_changes_and_how_it_ended() {
    let f = Fixture::new(2, "root");
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let text = std::fs::read_to_string(journal_path(&f)).unwrap();
    assert_eq!(journal::parse(&text).unreadable, 0, "{text}");
    let all = lines(&f);
    let ids = run_ids(&all);
    assert_eq!(ids.len(), 1);
    let first = &ids[0];

    // start: command, inventory, version, user, arguments
    let Line::Start(s) = &all[0] else {
        panic!("the first line is not a start line: {all:?}")
    };
    assert_eq!(s.command, "apply");
    assert!(s.inventory.ends_with("inventory.yaml"), "{}", s.inventory);
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    assert!(!s.user.is_empty());
    assert_eq!(s.args["only"], serde_json::json!(["common"]));

    // one change line per change: a directory and two files on each host, all ok
    let ch = changes_of(&all, first);
    let mut seen: Vec<(String, String)> = ch
        .iter()
        .map(|c| {
            assert_eq!(c.phase, "common");
            assert_eq!(c.result, ChangeResult::Ok, "{c:?}");
            assert!(c.seconds >= 0.0);
            let what = c.change.split_whitespace().take(2).collect::<Vec<_>>();
            (c.host.clone(), what.join(" "))
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("h0", "+ directory"),
            ("h0", "+ file"),
            ("h0", "+ file"),
            ("h1", "+ directory"),
            ("h1", "+ file"),
            ("h1", "+ file"),
        ]
        .map(|(h, c)| (h.to_string(), c.to_string()))
        .to_vec()
    );
    assert!(ch
        .iter()
        .any(|c| c.host == "h1" && c.change.contains("/h1/etc/app.conf")));
    let end = end_of(&all, first).expect("an end line");
    assert_eq!((end.result, end.changes, end.error), (Outcome::Ok, 6, None));

    // a second apply changes nothing: a run with no change lines
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let all = lines(&f);
    let ids = run_ids(&all);
    assert_eq!(ids.len(), 2);
    assert_eq!(run_lines(&all, &ids[1]).len(), 2, "start and end only");
    assert_eq!(end_of(&all, &ids[1]).unwrap().changes, 0);

    // check does not write to the journal
    assert_eq!(f.run("check", &[]).code, 0);
    assert_eq!(run_ids(&lines(&f)).len(), 2);

    // the journal is private
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&journal_path(&f)), 0o600);
    assert_eq!(mode(journal_path(&f).parent().unwrap()), 0o700);

    // history lists both runs
    let out = history(&f, &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert!(rows[0].starts_with("RUN"), "{}", out.stdout);
    assert!(
        rows[1].starts_with(first.as_str())
            && rows[1].contains(" apply ")
            && rows[1].ends_with(" ok"),
        "{}",
        out.stdout
    );
    let v = history_json(&f);
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["changes"], 6);
    assert_eq!(runs[1]["changes"], 0);
    assert_eq!(runs[1]["result"], "ok");

    // history RUN: by prefix, with the inventory named, and `last` alone
    let out = history(&f, &["inventory.yaml", &first[..4]]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!("run {first}: apply ok")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("\nphase common\n"), "{}", out.stdout);
    assert!(out.stdout.contains("\n  h0\n    ok "), "{}", out.stdout);
    assert!(out.stdout.contains("/h1/etc/secret.conf"), "{}", out.stdout);
    let out = history(&f, &["last"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("No changes were made."),
        "{}",
        out.stdout
    );
    let out = history(&f, &[first.as_str(), "--format", "json"]);
    let d: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(d["id"], first.as_str());
    assert_eq!(d["phases"][0]["phase"], "common");
    assert_eq!(d["phases"][0]["hosts"].as_array().unwrap().len(), 2);
    let out = history(&f, &["ffffffffff"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("no run \"ffffffffff\""),
        "{}",
        out.stderr
    );
}

#[test]
fn journal_records_failed_runs_with_the_failed_change() {
    let f = Fixture::new(1, "root");
    let r = f.root.display();
    f.write_role(&format!(
        "\x20 - path: \"{r}/{{{{ host.name }}}}/etc/checked.conf\"\n    content: \"x\\n\"\n    validate: \"grep -q never {{}}\"\n"
    ));
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = lines(&f);
    let id = &run_ids(&all)[0];
    let end = end_of(&all, id).expect("an end line");
    assert_eq!(end.result, Outcome::Failed);
    let err = end.error.unwrap_or_default();
    assert!(err.contains("failed validation"), "{err}");
    assert!(!err.contains('\n'));
    let failed: Vec<_> = changes_of(&all, id)
        .into_iter()
        .filter(|c| c.result == ChangeResult::Error)
        .collect();
    assert_eq!(failed.len(), 1, "{all:?}");
    assert!(failed[0].change.contains("checked.conf"), "{:?}", failed[0]);
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("failed validation"),
        "{:?}",
        failed[0]
    );

    let out = history(&f, &[]);
    assert!(
        out.stdout.contains("failed: phase common"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(1 failed)"), "{}", out.stdout);
    let out = history(&f, &["last"]);
    assert!(out.stdout.contains("ERROR"), "{}", out.stdout);
    assert!(out.stdout.contains("checked.conf"), "{}", out.stdout);
}

#[test]
fn journal_records_a_run_that_could_not_connect_as_failed() {
    let mut f = Fixture::new(2, "root");
    f.sshd[1].kill_all();
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = lines(&f);
    let id = &run_ids(&all)[0];
    let end = end_of(&all, id).expect("an end line");
    assert_eq!((end.result, end.changes), (Outcome::Failed, 0));
    assert!(
        end.error
            .unwrap_or_default()
            .contains("cannot connect to 1 of 2 hosts"),
        "{all:?}"
    );
}

#[test]
fn journal_never_holds_a_secret() {
    let f = Fixture::new(1, "root");
    let r = f.root.display();
    // The validation fails and prints the new file, which holds a secret: the error of the
    // change carries the secret value.
    f.write_role(&format!(
        "\x20 - path: \"{r}/{{{{ host.name }}}}/etc/leaky.conf\"\n    content: \"pw={{{{ secrets.superuser_password }}}}\\n\"\n    validate: \"cat {{}}; false\"\n    secret: true\n"
    ));
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    let secret = f.secret();
    assert!(secret.len() >= 8);
    let text = std::fs::read_to_string(journal_path(&f)).unwrap();
    assert!(text.contains("pw=<redacted>"), "{text}");
    assert!(!text.contains(&secret), "the journal holds the secret");
    assert!(!out.all().contains(&secret), "the secret was printed");
    let out = history(&f, &["last"]);
    assert!(out.stdout.contains("pw=<redacted>"), "{}", out.stdout);
    assert!(!out.all().contains(&secret));
}

#[test]
fn journal_tells_interrupted_runs_from_running_ones() {
    let f = Fixture::new(1, "root");
    // A simulated crash: a start line and no end line, and no run holding its lock.
    std::fs::create_dir_all(journal_path(&f).parent().unwrap()).unwrap();
    std::fs::write(
        journal_path(&f),
        concat!(
            r#"{"type":"start","run":"0badc0de","time":"2024-06-01T10:00:00.000Z","command":"apply","inventory":"/x/inventory.yaml","version":"0.1.0","user":"ann","pid":1,"args":{}}"#,
            "\n",
            r#"{"type":"change","run":"0badc0de","time":"2024-06-01T10:00:01.000Z","phase":"common","host":"h0","change":"+ file /x","result":"ok","seconds":0.1}"#,
            "\n",
            // cut short while it was written
            r#"{"type":"change","run":"0badc0de","ti"#,
        ),
    )
    .unwrap();
    let v = history_json(&f);
    assert_eq!(v[0]["result"], "interrupted", "{v}");
    assert_eq!(v[0]["changes"], 1, "{v}");
    let out = history(&f, &[]);
    assert!(out.stderr.contains("1 unreadable line"), "{}", out.all());

    // A real run, held inside a slow validation: running while it runs...
    let r = f.root.display();
    f.write_role(&format!(
        "\x20 - path: \"{r}/{{{{ host.name }}}}/etc/slow.conf\"\n    content: \"x\\n\"\n    validate: \"sleep 30\"\n"
    ));
    let mut child = spawn_apply(&f);
    // the directory and two files are recorded, the slow file is being validated
    let id = wait_for_running(&f, &mut child, 3);
    // ...interrupted after Ctrl-C, with an end line that says so...
    // SAFETY: kill(2) on the child we spawned.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(130));
    let end = end_of(&lines(&f), &id).expect("an end line after Ctrl-C");
    assert_eq!(end.result, Outcome::Interrupted);
    assert!(history(&f, &["last"])
        .stdout
        .contains(": apply interrupted"));

    // ...and interrupted, without an end line, when killed outright.
    let mut child = spawn_apply(&f);
    let id = wait_for_running(&f, &mut child, 0);
    child.kill().unwrap();
    wait_exit(&mut child);
    assert!(end_of(&lines(&f), &id).is_none());
    let v = history_json(&f);
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 3, "{v}");
    assert_eq!(runs[2]["id"], id.as_str());
    assert_eq!(runs[2]["result"], "interrupted", "{v}");
}

fn spawn_apply(f: &Fixture) -> Child {
    let inv = f.inventory();
    let roles = f.roles_dir();
    Command::new(bin())
        .args(["apply", inv.to_str().unwrap(), "--roles-dir"])
        .arg(roles)
        .args(["--only", "common"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until `history` shows the latest run as running with at least `changes` changes made;
/// return its id.
fn wait_for_running(f: &Fixture, child: &mut Child, changes: u64) -> String {
    let t = Instant::now();
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "apply ended before it reached the slow validation"
        );
        if journal_path(f).exists() {
            let v = history_json(f);
            let last = v.as_array().and_then(|a| a.last()).cloned();
            if let Some(last) = last {
                if last["result"] == "running" && last["changes"].as_u64() >= Some(changes) {
                    return last["id"].as_str().unwrap().to_string();
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no running apply in the journal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("apply did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
