//! Executing changes on one host: the only code that mutates hosts for the generic steps.

use super::change::{Change, UnitAction};
use super::facts::PENDING_DIR;
use super::record;
use crate::shell::sh_quote;
use crate::ssh::Session;
use miette::{miette, Result};
use sha2::{Digest, Sha256};
use std::time::Instant;

/// Apply `changes` on one host, in order. Unit restarts/reloads are included; callers that
/// orchestrate restarts across hosts pass only the part they want run now. Each change is
/// recorded (see [`super::record`]) with its result; changes after a failed one are not made.
pub async fn apply_changes(s: &Session, changes: &[Change]) -> Result<()> {
    // Packages are installed in one apt transaction, holds in one apt-mark call.
    let pkgs: Vec<(&String, &String)> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Package { name, to, .. } => Some((name, to)),
            _ => None,
        })
        .collect();
    if !pkgs.is_empty() {
        let t = Instant::now();
        let r = install(s, &pkgs, "", false).await;
        for c in changes
            .iter()
            .filter(|c| matches!(c, Change::Package { .. }))
        {
            record::result(s.host(), &c.summary(), &r, t.elapsed());
        }
        r?;
    }
    let mut paired_done: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < changes.len() {
        let c = &changes[i];
        i += 1;
        if not_here(c) {
            continue;
        }
        if batchable(c) {
            // This change and the directories and plain files right after it: one command.
            let run = changes[i..]
                .iter()
                .take_while(|c| batchable(c) || not_here(c))
                .count();
            let batch: Vec<&Change> = std::iter::once(c)
                .chain(changes[i..i + run].iter().filter(|c| batchable(c)))
                .collect();
            i += run;
            write_batch(s, &batch).await?;
            continue;
        }
        if let Change::File {
            pair: Some(name), ..
        } = c
        {
            if paired_done.contains(&name.as_str()) {
                continue;
            }
            paired_done.push(name);
            let members: Vec<&Change> = changes
                .iter()
                .filter(|m| matches!(m, Change::File { pair: Some(n), .. } if n == name))
                .collect();
            let t = Instant::now();
            let r = replace_together(s, &members).await;
            for m in &members {
                record::result(s.host(), &m.summary(), &r, t.elapsed());
            }
            r?;
            continue;
        }
        let t = Instant::now();
        let r = apply_one(s, c).await;
        record::result(s.host(), &c.summary(), &r, t.elapsed());
        r?;
    }
    Ok(())
}

/// Changes applied elsewhere (packages in one transaction above, uploads by their phase) or
/// not actions at all.
fn not_here(c: &Change) -> bool {
    matches!(
        c,
        Change::Package { .. } | Change::Deferred { .. } | Change::Upload { .. }
    )
}

/// A directory, or a file that goes live on its own (no validation, not one of a pair).
fn batchable(c: &Change) -> bool {
    matches!(
        c,
        Change::Directory { .. }
            | Change::File {
                validate: None,
                pair: None,
                ..
            }
    )
}

/// Make a run of directory and file changes in one command (one round trip, a few
/// processes), each recorded with its own result. The files' contents go in one tar stream
/// to temporary names beside their targets; once all are there and match their SHA-256, and
/// their owner and mode are set, each is renamed over its target in order, so that every
/// file is either its old or its new self. Pending-restart markers for the units they
/// notify are written first, as for a single file. On a failure the temporary files are
/// removed, the changes made before it are recorded as done and the failed one as failed.
async fn write_batch(s: &Session, batch: &[&Change]) -> Result<()> {
    let t = Instant::now();
    let token = format!("{:08x}", rand::random::<u32>());
    let mut tar = tar::Builder::new(Vec::new());
    let mut notify: Vec<&String> = Vec::new();
    let mut temps: Vec<String> = Vec::new();
    let mut sums: Vec<String> = Vec::new();
    // Owner and mode of the temporary files: one `chown` per owner and one `chmod` per mode
    // (all chowns before the chmods, which a chown could undo), each with the first change
    // of its group, which a failure there is reported against.
    let mut chown: Vec<Group> = Vec::new();
    let mut chmod: Vec<Group> = Vec::new();
    // Each change's own command, in order: directories first (the files may go into them).
    let mut dirs: Vec<String> = Vec::new();
    let mut steps: Vec<String> = Vec::new();
    for (n, c) in batch.iter().enumerate() {
        match c {
            Change::Directory {
                path,
                mode,
                owner,
                group: g,
                ..
            } => {
                let p = sh_quote(path);
                dirs.push(format!(
                    "mkdir -p {p} && chown {}:{} {p} && chmod {mode:o} {p} || exit 1; echo '@W {n}'",
                    sh_quote(owner),
                    sh_quote(g)
                ));
            }
            Change::File {
                path,
                mode,
                owner,
                group: g,
                new,
                notify: units,
                content_changed,
                ..
            } => {
                for u in units {
                    if !notify.contains(&u) {
                        notify.push(u);
                    }
                }
                let owner = format!("{}:{}", sh_quote(owner), sh_quote(g));
                let mode = mode & 0o7777;
                if !content_changed {
                    let p = sh_quote(path);
                    steps.push(format!(
                        "chown {owner} {p} && chmod {mode:o} {p} || exit 1; echo '@W {n}'"
                    ));
                    continue;
                }
                let (dir, base) = path.rsplit_once('/').unwrap_or((".", path));
                let tmp = format!("{dir}/.{base}.pgdeploy-{token}");
                let mut h = tar::Header::new_gnu();
                h.set_size(new.len() as u64);
                h.set_mode(0o600);
                // The host stamps each file with the time it is unpacked (`--touch`).
                h.set_mtime(0);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, tmp.trim_start_matches('/'), new.as_slice())
                    .map_err(|e| miette!("{}: cannot pack {path}: {e}", s.host()))?;
                sums.push(sh_quote(&format!(
                    "{}  {tmp}",
                    hex::encode(Sha256::digest(new))
                )));
                let q = sh_quote(&tmp);
                add_to_group(&mut chown, format!("chown {owner}"), n, &q);
                add_to_group(&mut chmod, format!("chmod {mode:o}"), n, &q);
                steps.push(format!(
                    "mv -f -- {q} {} || exit 1; echo '@W {n}'",
                    sh_quote(path)
                ));
                temps.push(q);
            }
            _ => {}
        }
    }
    let mut cmd = String::new();
    if !temps.is_empty() {
        cmd.push_str(&format!(
            "trap 'rm -f -- {}' EXIT\ntrap 'exit 1' HUP INT TERM PIPE\n",
            temps.join(" ").replace('\'', "'\\''")
        ));
    }
    if !notify.is_empty() {
        let marks: Vec<String> = notify
            .iter()
            .map(|u| format!("{PENDING_DIR}/{}", sh_quote(u)))
            .collect();
        cmd.push_str(&format!(
            "mkdir -p {PENDING_DIR} && touch {} || exit 1\n",
            marks.join(" ")
        ));
    }
    for l in &dirs {
        cmd.push_str(l);
        cmd.push('\n');
    }
    if !temps.is_empty() {
        cmd.push_str(&format!(
            "tar -x --no-same-owner --touch -C / -f - || exit 1\n\
             printf '%s\\n' {} | sha256sum --quiet --strict -c - >&2 || \
             {{ echo 'pgdeploy: the files arrived incomplete or corrupt (checksum mismatch); none was put in place' >&2; exit 1; }}\n",
            sums.join(" ")
        ));
        for (command, n, ps) in chown.iter().chain(&chmod) {
            cmd.push_str(&format!(
                "{command} -- {} || {{ echo '@X {n}'; exit 1; }}\n",
                ps.join(" ")
            ));
        }
    }
    for l in &steps {
        cmd.push_str(l);
        cmd.push('\n');
    }
    let input = tar
        .into_inner()
        .map_err(|e| miette!("{}: cannot pack the files: {e}", s.host()))?;
    // Shown as a summary, not as the script: it holds the contents' checksums.
    let shown = format!("write {} directories and files", batch.len());
    let out = s
        .exec_shown(
            &cmd,
            &shown,
            (!temps.is_empty()).then_some(input.as_slice()),
        )
        .await;
    let elapsed = t.elapsed();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let e: miette::Report = e.into();
            record::result::<()>(s.host(), &batch[0].summary(), &Err(miette!("{e}")), elapsed);
            return Err(e);
        }
    };
    if out.ok() {
        for c in batch {
            record::result(s.host(), &c.summary(), &Ok(()), elapsed);
        }
        return Ok(());
    }
    let stdout = out.stdout_str();
    let done: Vec<usize> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@W ")?.trim().parse().ok())
        .collect();
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("@X ")?.trim().parse().ok())
        .or_else(|| (0..batch.len()).find(|n| !done.contains(n)))
        .unwrap_or(0);
    let what = match batch[failed] {
        Change::Directory { path, .. } => format!("could not make directory {path}"),
        Change::File { path, .. } => format!("could not write {path}"),
        _ => "could not apply the change".into(),
    };
    let err = miette!(
        help = "check that the owner and group exist, that the file system has free space and is writable, and that the user may write there (become: sudo?); a file not yet replaced was left untouched",
        "{}: {what} (exit status {}): {}",
        s.host(),
        out.status,
        out.stderr_str().trim()
    );
    for (n, c) in batch.iter().enumerate() {
        if done.contains(&n) {
            record::result(s.host(), &c.summary(), &Ok(()), elapsed);
        } else if n == failed {
            record::result::<()>(s.host(), &c.summary(), &Err(miette!("{err}")), elapsed);
        }
    }
    Err(err)
}

/// A command run once on several paths, with the first change of the batch it serves.
type Group = (String, usize, Vec<String>);

fn add_to_group(groups: &mut Vec<Group>, command: String, n: usize, path: &str) {
    match groups.iter_mut().find(|(c, _, _)| *c == command) {
        Some((_, _, ps)) => ps.push(path.to_string()),
        None => groups.push((command, n, vec![path.to_string()])),
    }
}

/// Replace the files of one pair (a certificate and its key) together: each is staged next to
/// its place (and validated, if it has a validation), then one command renames them all, so a
/// reader sees the old pair or the new one. A failure before the rename removes what was
/// staged and leaves the old files. A single file with a validation goes the same way.
async fn replace_together(s: &Session, files: &[&Change]) -> Result<()> {
    let mut notify_all: Vec<String> = Vec::new();
    let mut staged: Vec<(String, String)> = Vec::new();
    let mut result = Ok(());
    for c in files {
        let Change::File {
            path,
            mode,
            owner,
            group,
            new,
            notify,
            validate,
            ..
        } = c
        else {
            continue;
        };
        for u in notify {
            if !notify_all.contains(u) {
                notify_all.push(u.clone());
            }
        }
        let tmp = format!("{path}.pgdeploy-new");
        staged.push((tmp.clone(), path.clone()));
        if let Err(e) = stage(s, path, &tmp, new, *mode, owner, group, validate.as_deref()).await {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() && !notify_all.is_empty() {
        result = mark_pending(s, &notify_all).await;
    }
    if result.is_ok() {
        let mv: Vec<String> = staged
            .iter()
            .map(|(t, p)| format!("mv -f {} {}", sh_quote(t), sh_quote(p)))
            .collect();
        result = s
            .run(&mv.join(" && "))
            .await
            .map(|_| ())
            .map_err(Into::into);
    }
    if result.is_err() {
        let rm: Vec<String> = staged.iter().map(|(t, _)| sh_quote(t)).collect();
        let _ = s.exec(&format!("rm -f {}", rm.join(" ")), None).await;
    }
    result
}

async fn ensure_parent(s: &Session, path: &str) -> Result<()> {
    if let Some((dir, _)) = path.rsplit_once('/') {
        if !dir.is_empty() {
            s.run(&format!("test -d {q} || mkdir -p {q}", q = sh_quote(dir)))
                .await?;
        }
    }
    Ok(())
}

/// Put `new` at `tmp` (creating the directory of `path`), and run the file's validation on it.
#[allow(clippy::too_many_arguments)]
async fn stage(
    s: &Session,
    path: &str,
    tmp: &str,
    new: &[u8],
    mode: u32,
    owner: &str,
    group: &str,
    validate: Option<&str>,
) -> Result<()> {
    ensure_parent(s, path).await?;
    s.write_file(tmp, new, mode, owner, group).await?;
    if let Some(cmd) = validate {
        let check = cmd.replace("{}", &sh_quote(tmp));
        let out = s.exec(&check, None).await?;
        if !out.ok() {
            return Err(miette!(
                help = "the running service keeps its current configuration; fix the template or inventory value",
                "{}: the new {path} failed validation (`{cmd}`):\n{}{}",
                s.host(),
                out.stdout_str(),
                out.stderr_str()
            ));
        }
    }
    Ok(())
}

/// Apply one change without recording it (for a step that records itself as a whole).
pub(crate) async fn apply_one(s: &Session, c: &Change) -> Result<()> {
    match c {
        Change::Directory {
            path,
            mode,
            owner,
            group,
            ..
        } => {
            let p = sh_quote(path);
            s.run(&format!(
                "mkdir -p {p} && chown {}:{} {p} && chmod {mode:o} {p}",
                sh_quote(owner),
                sh_quote(group)
            ))
            .await?;
        }
        Change::File {
            validate: Some(_), ..
        } => replace_together(s, &[c]).await?,
        Change::File {
            path,
            mode,
            owner,
            group,
            new,
            notify,
            ..
        } => {
            if !notify.is_empty() {
                mark_pending(s, notify).await?;
            }
            ensure_parent(s, path).await?;
            s.write_file(path, new, *mode, owner, group).await?;
        }
        Change::Hold { name, hold } => {
            let verb = if *hold { "hold" } else { "unhold" };
            s.run(&format!("apt-mark {verb} {} >/dev/null", sh_quote(name)))
                .await?;
        }
        Change::Sysctl { name, to, .. } => {
            let out = s
                .exec(
                    &format!("sysctl -w {}={}", sh_quote(name), sh_quote(to)),
                    None,
                )
                .await?;
            if !out.ok() {
                return Err(miette!(
                    help = "the host may not allow this kernel parameter (containers often keep /proc/sys read-only)",
                    "{}: cannot set sysctl {name}={to}: {}",
                    s.host(),
                    out.stderr_str().trim()
                ));
            }
        }
        Change::Unit { unit, action, .. } => unit_action(s, unit, *action).await?,
        Change::Command { command, .. } => {
            s.run(command).await?;
        }
        Change::Package { .. } | Change::Deferred { .. } | Change::Upload { .. } => {}
    }
    Ok(())
}

/// One systemctl action (not recorded: for callers that record the step themselves).
pub(crate) async fn unit_action(s: &Session, unit: &str, action: UnitAction) -> Result<()> {
    let q = sh_quote(unit);
    let cmd = match action {
        UnitAction::DaemonReload => "systemctl daemon-reload".to_string(),
        UnitAction::Enable => format!("systemctl enable --quiet {q}"),
        UnitAction::Disable => format!("systemctl disable --quiet {q}"),
        UnitAction::Start => format!("systemctl start {q}"),
        UnitAction::StartNoBlock => format!("systemctl start --no-block {q}"),
        UnitAction::Stop => format!("systemctl stop {q}"),
        UnitAction::Restart => format!("systemctl restart {q}"),
        UnitAction::Reload => format!("systemctl reload {q}"),
    };
    let out = s.exec(&cmd, None).await?;
    if !out.ok() {
        let journal = s
            .exec(
                &format!("journalctl -u {q} -n 15 --no-pager 2>/dev/null"),
                None,
            )
            .await
            .map(|o| o.stdout_str())
            .unwrap_or_default();
        return Err(miette!(
            help = "see the unit's log above; fix the cause and run `pgdeploy apply` again",
            "{}: `{cmd}` failed: {}\n{journal}",
            s.host(),
            out.stderr_str().trim()
        ));
    }
    if matches!(
        action,
        UnitAction::Restart
            | UnitAction::Reload
            | UnitAction::Start
            | UnitAction::StartNoBlock
            | UnitAction::Stop
    ) {
        s.exec(&format!("rm -f {PENDING_DIR}/{q}"), None).await?;
    }
    Ok(())
}

async fn mark_pending(s: &Session, units: &[String]) -> Result<()> {
    let mut cmd = format!("mkdir -p {PENDING_DIR}");
    for u in units {
        cmd.push_str(&format!(" && touch {PENDING_DIR}/{}", sh_quote(u)));
    }
    s.run(&cmd).await?;
    Ok(())
}

/// Install packages at exact versions (`(candidate)` means any), without prompts, keeping
/// configuration files, and with service starts by package scripts forbidden (policy-rc.d for
/// the transaction only). `apt_opts` can restrict apt to one source; `update` refreshes its
/// lists first. Each package is recorded as a change.
pub async fn install_packages(
    s: &Session,
    pkgs: &[(&String, &String)],
    apt_opts: &str,
    update: bool,
) -> Result<()> {
    let t = Instant::now();
    let r = install(s, pkgs, apt_opts, update).await;
    for (name, ver) in pkgs {
        record::result(
            s.host(),
            &format!("! install package {name} {ver}"),
            &r,
            t.elapsed(),
        );
    }
    r
}

/// [`install_packages`] without recording (for callers that record the step themselves).
pub(crate) async fn install(
    s: &Session,
    pkgs: &[(&String, &String)],
    apt_opts: &str,
    update: bool,
) -> Result<()> {
    let mut args = Vec::new();
    for (name, ver) in pkgs {
        if ver.starts_with('(') {
            args.push(sh_quote(name));
        } else {
            args.push(sh_quote(&format!("{name}={ver}")));
        }
    }
    let refresh = if update {
        format!("apt-get {apt_opts} update -q >/dev/null 2>&1 || apt-get {apt_opts} update; ")
    } else {
        String::new()
    };
    let cmd = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; \
         printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; \
         trap 'rm -f /usr/sbin/policy-rc.d' EXIT; {refresh}\
         apt-get {apt_opts} install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages \
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {} 2>&1",
        args.join(" ")
    );
    let out = s.exec(&cmd, None).await?;
    if !out.ok() {
        let text = out.stdout_str() + &out.stderr_str();
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        return Err(miette!(
            help = "check the package source (bundle or the host's apt sources) and run `pgdeploy apply` again",
            "{}: package installation failed:\n{}",
            s.host(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ssh::double::{Answer, Call, Script};
    use std::sync::Arc;

    fn file(path: &str, pair: Option<&str>, fail_write: bool) -> Change {
        Change::File {
            path: path.into(),
            mode: 0o600,
            owner: "root".into(),
            group: "root".into(),
            old: Some(b"old".to_vec()),
            new: if fail_write {
                b"unwritable".to_vec()
            } else {
                b"new".to_vec()
            },
            diff: String::new(),
            content_changed: true,
            secret: true,
            validate: None,
            notify: vec![],
            pair: pair.map(String::from),
        }
    }

    /// A host on which every command succeeds, no file exists yet, and writing the content
    /// `unwritable` fails.
    fn host() -> Arc<Script<()>> {
        Arc::new(Script::new(()).rule(|_, c, _| match c {
            Call::Exec { stdin, .. } if stdin == b"unwritable" => {
                Some(Answer::exit(1, "disk full"))
            }
            Call::Exec { cmd, .. } if cmd.contains("then stat") => Some(Answer::ok("absent\n")),
            Call::Exec { .. } => Some(Answer::ok("")),
            _ => None,
        }))
    }

    /// The files of a pair are staged first and renamed in one command; a file outside the
    /// pair is written in place as usual.
    #[tokio::test]
    async fn a_pair_is_staged_then_renamed_in_one_command() {
        let d = host();
        let s = Session::double("h1", d.clone());
        let changes = [
            file("/t/a.key", Some("tls"), false),
            file("/t/other.conf", None, false),
            file("/t/a.crt", Some("tls"), false),
        ];
        apply_changes(&s, &changes).await.unwrap();
        let mv = d.matching("mv -f");
        let pair_mv: Vec<&String> = mv
            .iter()
            .filter(|m| m.contains("mv -f /t/a.key.pgdeploy-new /t/a.key"))
            .collect();
        assert_eq!(pair_mv.len(), 1, "{mv:#?}");
        assert!(
            pair_mv[0].contains(
                "mv -f /t/a.key.pgdeploy-new /t/a.key && mv -f /t/a.crt.pgdeploy-new /t/a.crt"
            ),
            "{}",
            pair_mv[0]
        );
        // Both members were staged before that rename.
        let calls: Vec<String> = d.calls().iter().map(|(_, c)| c.text()).collect();
        let rename_at = calls
            .iter()
            .position(|c| c.contains("a.key.pgdeploy-new /t/a.key"))
            .unwrap();
        for staged in ["/t/a.key.pgdeploy-new", "/t/a.crt.pgdeploy-new"] {
            let at = calls
                .iter()
                .position(|c| c.contains(staged) && !c.starts_with("mv -f"))
                .unwrap_or_else(|| panic!("{staged} never staged: {calls:#?}"));
            assert!(at < rename_at, "{staged} staged after the rename");
        }
    }

    fn dir(path: &str) -> Change {
        Change::Directory {
            path: path.into(),
            mode: 0o750,
            owner: "root".into(),
            group: "adm".into(),
            exists: false,
        }
    }

    fn plain(path: &str, content: &str, notify: &[&str]) -> Change {
        let mut c = file(path, None, false);
        if let Change::File { new, notify: n, .. } = &mut c {
            *new = content.as_bytes().to_vec();
            *n = notify.iter().map(|u| u.to_string()).collect();
        }
        c
    }

    #[derive(Default)]
    struct Collect(std::sync::Mutex<Vec<String>>);
    impl crate::engine::Observer for Collect {
        fn change_done(&self, d: &record::Done) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {:?}", d.change, d.error.is_some()));
        }
    }

    /// Directories and plain files in a row go in one command: the directories first, the
    /// pending-restart marker before any file goes live, the contents as one tar stream of
    /// temporary names beside the targets, then the renames in order.
    #[tokio::test]
    async fn a_run_of_directories_and_files_is_one_command() {
        let d = host();
        let s = Session::double("h1", d.clone());
        let changes = [
            dir("/t/d"),
            plain("/t/d/a.conf", "alpha\n", &[]),
            plain("/t/b.conf", "beta\n", &["x.service"]),
        ];
        apply_changes(&s, &changes).await.unwrap();
        let calls = d.calls();
        assert_eq!(calls.len(), 1, "{calls:#?}");
        let Call::Exec { cmd, stdin } = &calls[0].1 else {
            panic!("{calls:#?}")
        };
        let at = |needle: &str| {
            cmd.find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in {cmd}"))
        };
        assert!(at("mkdir -p /t/d && chown root:adm /t/d && chmod 750 /t/d") < at("tar -x"));
        assert!(at("touch /var/lib/pgdeploy/pending/x.service") < at("tar -x"));
        assert!(at("sha256sum") < at("mv -f -- /t/d/.a.conf.pgdeploy-"));
        assert!(at("mv -f -- /t/d/.a.conf.pgdeploy-") < at("mv -f -- /t/.b.conf.pgdeploy-"));
        let mut entries: Vec<(String, String)> = tar::Archive::new(stdin.as_slice())
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut body = String::new();
                std::io::Read::read_to_string(&mut e, &mut body).unwrap();
                (path, body)
            })
            .collect();
        entries.sort();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(
            entries[0].0.starts_with("t/.b.conf.pgdeploy-"),
            "{entries:?}"
        );
        assert_eq!(entries[0].1, "beta\n");
        assert!(
            entries[1].0.starts_with("t/d/.a.conf.pgdeploy-"),
            "{entries:?}"
        );
        assert_eq!(entries[1].1, "alpha\n");
    }

    /// When a rename fails, the changes made before it are recorded as done, the failed one as
    /// failed, and the error names its file.
    #[tokio::test]
    async fn a_failure_in_a_run_names_its_file_and_records_what_was_done() {
        let d = Arc::new(Script::new(()).rule(|_, c, _| match c {
            Call::Exec { .. } => Some(Answer::Exit(crate::ssh::Output {
                status: 1,
                stdout: b"@W 0\n@W 1\n".to_vec(),
                stderr: b"mv: cannot move: No space left on device".to_vec(),
            })),
            _ => None,
        }));
        let s = Session::double("h1", d.clone());
        let changes = [
            dir("/t/d"),
            plain("/t/d/a.conf", "alpha\n", &[]),
            plain("/t/b.conf", "beta\n", &[]),
            plain("/t/c.conf", "gamma\n", &[]),
        ];
        let seen = Arc::new(Collect::default());
        let err = record::in_phase(seen.clone(), "common", apply_changes(&s, &changes))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("could not write /t/b.conf"), "{msg}");
        assert!(msg.contains("No space left"), "{msg}");
        let got = seen.0.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].starts_with("+ directory /t/d") && got[0].ends_with("false"));
        assert!(got[1].contains("/t/d/a.conf") && got[1].ends_with("false"));
        assert!(got[2].contains("/t/b.conf") && got[2].ends_with("true"));
    }

    /// A member that cannot be staged leaves both files as they were: nothing is renamed and
    /// what was staged is removed.
    #[tokio::test]
    async fn a_pair_that_cannot_be_staged_changes_nothing() {
        let d = host();
        let s = Session::double("h1", d.clone());
        let changes = [
            file("/t/a.key", Some("tls"), false),
            file("/t/a.crt", Some("tls"), true),
        ];
        assert!(apply_changes(&s, &changes).await.is_err());
        assert!(
            d.matching("mv -f /t/a.key.pgdeploy-new").is_empty(),
            "{:#?}",
            d.calls()
        );
        let rm = d.matching("rm -f");
        assert!(
            rm.iter().any(|r| r.contains("/t/a.key.pgdeploy-new") && r.contains("/t/a.crt.pgdeploy-new")),
            "{rm:#?}"
        );
    }
}
