//! Integration tests: ssh. Every test talks to a real OpenSSH sshd on 127.0.0.1.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use pgdeploy::ssh::{ConnectOptions, Session, SshError, UploadFile};

use crate::support::{
    keygen, require_user, test_sudo_password, wait_until, SshdOptions, TestAgent, TestSshd,
};

fn opts() -> ConnectOptions {
    ConnectOptions::default()
}

async fn connect(sshd: &TestSshd) -> Session {
    let host = sshd.host("h1");
    match Session::connect_with_agent(&host, &opts(), None).await {
        Ok(s) => s,
        Err(e) => panic!("connect failed: {e:?}\nsshd log:\n{}", sshd.log_text()),
    }
}

fn full(e: &SshError) -> String {
    format!("{e} / help: {}", e.help().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exec_stdin_stdout_stderr_and_exit_codes() {
    let sshd = TestSshd::start();
    let s = connect(&sshd).await;
    assert_eq!(s.host(), "h1");

    let out = s
        .exec("cat; echo oops >&2; exit 3", Some(b"hello\n"))
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, b"hello\n");
    assert_eq!(out.stderr_str(), "oops\n");

    let out = s.exec("true", None).await.unwrap();
    assert!(out.ok());
    // A command that ignores a large stdin and exits must not hang.
    let ignored = vec![b'x'; 16 * 1024 * 1024];
    let out = s.exec("exit 4", Some(&ignored)).await.unwrap();
    assert_eq!(out.status, 4);

    // 8 MB through `cat`: stdin must be written while stdout is read (or both sides stall).
    let big: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let out = s.exec("cat", Some(&big)).await.unwrap();
    assert!(out.ok());
    assert_eq!(out.stdout.len(), big.len());
    assert!(out.stdout == big, "echoed data differs");

    // Exit status may arrive before the last data: output must still be complete.
    let out = s
        .exec("head -c 3000000 /dev/zero; exit 7", None)
        .await
        .unwrap();
    assert_eq!((out.status, out.stdout.len()), (7, 3_000_000));

    // run(): non-zero exit is an error naming host, command and stderr.
    let err = s
        .run("echo first >&2; echo 'the real cause' >&2; exit 42")
        .await
        .unwrap_err();
    let msg = full(&err);
    assert!(msg.starts_with("h1: "), "{msg}");
    assert!(msg.contains("exit status 42"), "{msg}");
    assert!(msg.contains("the real cause"), "{msg}");
    assert!(msg.contains("echo first"), "{msg}");
    assert_eq!(s.run("echo hi").await.unwrap().stdout_str(), "hi\n");
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_commands_share_one_connection_with_a_cap() {
    let sshd = TestSshd::start();
    let s = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();

    // 24 commands at once (sshd MaxSessions is 10, so without the cap some would be refused):
    // each registers itself, waits, counts the commands running, unregisters.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = s.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let cmd =
                format!("touch {d}/run.{i}; sleep 1; n=$(ls {d} | wc -l); rm {d}/run.{i}; echo $n");
            s.run(&cmd).await.map(|o| o.stdout_str())
        }));
    }
    let mut max = 0;
    for t in tasks {
        let n: usize = t.await.unwrap().unwrap().trim().parse().unwrap();
        max = max.max(n);
    }
    println!(
        "24 concurrent commands (1 s each) on one session: {:?}, max concurrent observed: {max}",
        t0.elapsed()
    );
    assert!(max <= pgdeploy::ssh::MAX_CHANNELS, "cap exceeded: {max}");
    assert!(max >= 4, "commands did not run concurrently: {max}");

    // One connection only: sshd logged a single accepted publickey login.
    let accepted = sshd.log_text().matches("Accepted publickey").count();
    assert_eq!(accepted, 1, "{}", sshd.log_text());

    // 100 small commands, sequential and concurrent.
    let t0 = Instant::now();
    for i in 0..100 {
        let o = s.run(&format!("echo {i}")).await.unwrap();
        assert_eq!(o.stdout_str().trim(), i.to_string());
    }
    let seq = t0.elapsed();
    let t0 = Instant::now();
    let futs: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            async move { s.run(&format!("echo {i}")).await.map(|o| o.stdout_str()) }
        })
        .collect();
    for (i, r) in futures::future::join_all(futs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap().trim(), i.to_string());
    }
    println!(
        "100 small commands on one session: sequential {seq:?}, concurrent {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_and_write_files_atomically_with_mode_and_owner() {
    let sshd = TestSshd::start();
    let s = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("conf file's.txt");
    let ps = p.display().to_string();

    assert_eq!(s.read_file(&ps).await.unwrap(), None);
    assert!(s
        .write_file(&ps, b"one\n", 0o640, "nobody", "nogroup")
        .await
        .unwrap());
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!(md.uid(), 65534);
    assert_eq!(md.gid(), 65534);
    assert_eq!(
        s.read_file(&ps).await.unwrap().as_deref(),
        Some(&b"one\n"[..])
    );

    // Unchanged: false, and nothing is rewritten.
    let ino = md.ino();
    assert!(!s
        .write_file(&ps, b"one\n", 0o640, "nobody", "nogroup")
        .await
        .unwrap());
    assert!(!s
        .write_file(&ps, b"one\n", 0o640, "65534", "65534")
        .await
        .unwrap());
    assert_eq!(std::fs::metadata(&p).unwrap().ino(), ino);

    // Mode only / owner only / content.
    assert!(s
        .write_file(&ps, b"one\n", 0o600, "nobody", "nogroup")
        .await
        .unwrap());
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert!(s
        .write_file(&ps, b"one\n", 0o600, "root", "root")
        .await
        .unwrap());
    assert_eq!(std::fs::metadata(&p).unwrap().uid(), 0);
    assert!(s
        .write_file(&ps, b"two\n", 0o600, "root", "root")
        .await
        .unwrap());
    assert_eq!(std::fs::read(&p).unwrap(), b"two\n");
    // Binary content and an empty file.
    let bin: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert!(s
        .write_file(&ps, &bin, 0o644, "root", "root")
        .await
        .unwrap());
    assert_eq!(s.read_file(&ps).await.unwrap().unwrap(), bin);
    assert!(s.write_file(&ps, b"", 0o644, "root", "root").await.unwrap());
    assert_eq!(std::fs::read(&p).unwrap(), b"");

    // No temp files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");

    // Errors name the host and the path.
    let err = s
        .write_file("/nonexistent-dir/x", b"x", 0o644, "root", "root")
        .await
        .unwrap_err();
    let msg = full(&err);
    assert!(
        msg.contains("h1") && msg.contains("/nonexistent-dir/x"),
        "{msg}"
    );
    let err = s
        .write_file(&ps, b"x", 0o644, "no-such-user-pgd", "root")
        .await
        .unwrap_err();
    assert!(full(&err).contains("no-such-user-pgd"), "{}", full(&err));
    assert_eq!(std::fs::read(&p).unwrap(), b"");
}

fn make_file(path: &Path, mb: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1024 * 1024];
    for i in 0..mb {
        for (j, b) in block.iter_mut().enumerate() {
            *b = ((i * 31 + j * 7) % 253) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn upload_file(dir: &Path, name: &str) -> UploadFile {
    let p = dir.join(name);
    UploadFile {
        name: name.into(),
        size: std::fs::metadata(&p).unwrap().len(),
        sha256: sha256_file(&p),
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_upload_is_streamed_checked_and_renamed_into_place() {
    let sshd = TestSshd::start();
    let s = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let remote = dir.path().join("remote");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&remote).unwrap();
    make_file(&local.join("big.bin"), 50);
    std::fs::write(local.join("small_1.0+b1_amd64.deb"), b"small\n").unwrap();
    std::fs::write(remote.join("small_1.0+b1_amd64.deb"), b"older\n").unwrap();
    let files = vec![
        upload_file(&local, "big.bin"),
        upload_file(&local, "small_1.0+b1_amd64.deb"),
    ];
    let rs = remote.display().to_string();

    let t0 = Instant::now();
    s.upload_all(&local, &files, &rs, 0o640).await.unwrap();
    let took = t0.elapsed();
    println!(
        "upload 50 MB and a small file: {took:?} ({:.1} MB/s)",
        50.0 / took.as_secs_f64()
    );
    for f in &files {
        assert_eq!(sha256_file(&remote.join(&f.name)), f.sha256, "{}", f.name);
        assert_eq!(
            std::fs::metadata(remote.join(&f.name))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
    }
    assert_eq!(names_in(&remote), ["big.bin", "small_1.0+b1_amd64.deb"]);
    let age = std::fs::metadata(remote.join("big.bin"))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "mtime {age:?} ago");

    // A local file that is not what the manifest says: refused, and nothing of the batch
    // moves in (not even the good file sent before it), nor stays behind.
    std::fs::write(local.join("new.deb"), b"new\n").unwrap();
    let mut wrong = upload_file(&local, "small_1.0+b1_amd64.deb");
    wrong.sha256 = "0".repeat(64);
    let err = s
        .upload_all(&local, &[upload_file(&local, "new.deb"), wrong], &rs, 0o644)
        .await
        .unwrap_err();
    let msg = full(&err);
    assert!(msg.contains("differs from the SHA-256"), "{msg}");
    assert!(msg.contains("small_1.0+b1_amd64.deb"), "{msg}");
    assert_eq!(names_in(&remote), ["big.bin", "small_1.0+b1_amd64.deb"]);

    // A file missing on the control machine.
    let mut missing = upload_file(&local, "new.deb");
    missing.name = "missing.deb".into();
    let err = s
        .upload_all(&local, &[missing], &rs, 0o644)
        .await
        .unwrap_err();
    assert!(full(&err).contains("missing.deb"), "{}", full(&err));
    assert_eq!(names_in(&remote), ["big.bin", "small_1.0+b1_amd64.deb"]);

    // A name that would leave the directory is refused before anything runs.
    let mut escape = upload_file(&local, "new.deb");
    escape.name = "../escape".into();
    let err = s
        .upload_all(&local, &[escape], &rs, 0o644)
        .await
        .unwrap_err();
    assert!(
        full(&err).contains("not a plain file name"),
        "{}",
        full(&err)
    );
    assert!(!dir.path().join("escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_is_never_half_written_when_sshd_dies() {
    let mut sshd = TestSshd::start();
    let s = connect(&sshd).await;
    let dir = tempfile::tempdir().unwrap();
    let local_dir = dir.path().join("local");
    std::fs::create_dir(&local_dir).unwrap();
    make_file(&local_dir.join("data.bin"), 400);
    let target_dir = dir.path().join("t");
    std::fs::create_dir(&target_dir).unwrap();
    let target = target_dir.join("data.bin");
    std::fs::write(&target, b"old content\n").unwrap();

    let ts = target_dir.display().to_string();
    let s2 = s.clone();
    let files = vec![upload_file(&local_dir, "data.bin")];
    let ld = local_dir.clone();
    let up = tokio::spawn(async move { s2.upload_all(&ld, &files, &ts, 0o644).await });

    // Wait until the scratch directory is being filled, then kill sshd and its sessions.
    let td = target_dir.clone();
    let started = tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(60), || {
            std::fs::read_dir(&td)
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(".pgdeploy-upload-")
                            && std::fs::metadata(e.path().join("data.bin"))
                                .map(|m| m.len() > 1_000_000)
                                .unwrap_or(false)
                    })
                })
                .unwrap_or(false)
        })
    })
    .await
    .unwrap();
    assert!(started, "the upload never started writing a temp file");
    sshd.kill();

    let res = tokio::time::timeout(Duration::from_secs(120), up)
        .await
        .expect("upload did not notice the dead connection")
        .unwrap();
    let err = res.expect_err("upload succeeded although sshd was killed");
    let msg = full(&err);
    assert!(msg.contains("h1") && msg.contains("upload"), "{msg}");
    println!("error after sshd was killed mid-upload: {msg}");
    assert_eq!(std::fs::read(&target).unwrap(), b"old content\n");

    // The scratch directory is removed by the remote shell once its input ends.
    let td = target_dir.clone();
    let clean = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&td)
            .map(|rd| rd.count() == 1)
            .unwrap_or(false)
    });
    assert!(clean, "temp file left behind in {}", target_dir.display());
    assert!(s.is_closed() || s.exec("true", None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_host_key_is_refused_unless_accepted_then_recorded() {
    let sshd = TestSshd::start();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("sub").join("known_hosts");
    let mut host = sshd.host("h1");
    host.ssh.known_hosts = Some(kh.display().to_string());

    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("unknown key must be refused");
    let msg = full(&err);
    assert!(msg.contains("unknown host key"), "{msg}");
    assert!(msg.contains("--accept-new-host-keys"), "{msg}");
    assert!(msg.contains("SHA256:"), "{msg}");
    assert!(msg.contains(&format!("[127.0.0.1]:{}", sshd.port)), "{msg}");
    assert!(!kh.exists());

    let accept = ConnectOptions {
        accept_new_host_keys: true,
        known_hosts: None,
    };
    let s = Session::connect_with_agent(&host, &accept, None)
        .await
        .unwrap();
    assert!(s.run("true").await.is_ok());
    let text = std::fs::read_to_string(&kh).unwrap();
    assert_eq!(
        text,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key_pub)
    );

    // Now known: accepted without the flag; not recorded twice with it.
    Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();
    Session::connect_with_agent(&host, &accept, None)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), text);

    // Hashed entries (`ssh-keygen -H`, Debian's HashKnownHosts default) are understood.
    crate::support::sh(
        std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&kh),
    );
    let hashed = std::fs::read_to_string(&kh).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();

    // ConnectOptions.known_hosts is used when the host has none.
    host.ssh.known_hosts = None;
    let o = ConnectOptions {
        accept_new_host_keys: false,
        known_hosts: Some(kh.clone()),
    };
    Session::connect_with_agent(&host, &o, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_host_key_is_always_refused() {
    let sshd = TestSshd::start();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    keygen(&other, "", "other");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "# comment\nexample.org {other_pub}[127.0.0.1]:{} {other_pub}",
            sshd.port
        ),
    )
    .unwrap();
    let mut host = sshd.host("h1");
    host.ssh.known_hosts = Some(kh.display().to_string());
    for accept in [false, true] {
        let o = ConnectOptions {
            accept_new_host_keys: accept,
            known_hosts: None,
        };
        let err = Session::connect_with_agent(&host, &o, None)
            .await
            .err()
            .expect("changed key must be refused");
        let msg = full(&err);
        assert!(msg.contains("HOST KEY CHANGED"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains(&kh.display().to_string()), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_root_user_with_passwordless_sudo() {
    require_user("pgdtest");
    let sshd = TestSshd::start_for_user("pgdtest");
    let s = connect(&sshd).await;
    assert_eq!(s.run("id -un").await.unwrap().stdout_str(), "root\n");
    let out = s
        .exec("cat; echo \"$0\" >&2", Some(b"payload"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"payload");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    assert!(s
        .write_file(&p.display().to_string(), b"x\n", 0o600, "root", "root")
        .await
        .unwrap());
    assert_eq!(std::fs::metadata(&p).unwrap().uid(), 0);
    // Quoting survives sudo + sh -c.
    let out = s.run("printf '%s|' \"a b\" 'c'\"'\"'d'").await.unwrap();
    assert_eq!(out.stdout_str(), "a b|c'd|");

    // Timing with a login shell that is plain sh (root's ~/.bashrc on a dev box can be slow).
    let t0 = Instant::now();
    for i in 0..100 {
        let o = s.exec(&format!("echo {i}"), None).await.unwrap();
        assert!(o.ok());
    }
    println!(
        "100 small commands via sudo -n (user pgdtest, /bin/sh): {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sudo_with_password_from_env() {
    require_user("pgdtestpw");
    let password = test_sudo_password();
    let sshd = TestSshd::start_for_user("pgdtestpw");
    let mut host = sshd.host("h1");
    let var = format!("PGD_TEST_SUDO_PW_{}", sshd.port);
    std::env::set_var(&var, &password);
    host.ssh.sudo_password_env = Some(var.clone());
    let s = Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();
    assert_eq!(s.run("id -un").await.unwrap().stdout_str(), "root\n");
    // The password line is consumed by sudo; the payload reaches the command.
    let out = s.exec("cat", Some(b"payload\nline2\n")).await.unwrap();
    assert_eq!(out.stdout_str(), "payload\nline2\n");
    let out = s.exec("cat", None).await.unwrap();
    assert_eq!(out.stdout_str(), "");
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.run(&format!("id -u; echo {i}")).await
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().unwrap().stdout_str().starts_with("0\n"));
    }
    let err = s.run("echo nope >&2; exit 5").await.unwrap_err();
    assert!(!full(&err).contains(&password));

    // Wrong password: clear error, password not echoed.
    let wrong = format!("{password}-wrong");
    std::env::set_var(&var, &wrong);
    // How sudo works is found out at the first command (no round trip of its own), so a
    // wrong password fails there, with the same message.
    let s = Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();
    let err = s
        .run("true")
        .await
        .expect_err("wrong sudo password must fail");
    let msg = full(&err);
    assert!(msg.contains("sudo rejected"), "{msg}");
    assert!(!msg.contains(&wrong) && !msg.contains(&password), "{msg}");
    std::env::remove_var(&var);
    let s = Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();
    let err = s.run("true").await.expect_err("missing env var must fail");
    assert!(full(&err).contains(&var), "{}", full(&err));

    // No variable configured and no terminal: clear error instead of a prompt.
    if !std::io::stdin().is_terminal() {
        host.ssh.sudo_password_env = None;
        let s = Session::connect_with_agent(&host, &opts(), None)
            .await
            .unwrap();
        let err = s.run("true").await.expect_err("no terminal must fail");
        let msg = full(&err);
        assert!(msg.contains("no terminal"), "{msg}");
        assert!(msg.contains("sudo_password_env"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jump_host() {
    let jump = TestSshd::start_with(SshdOptions {
        extra_config: vec!["LogLevel DEBUG1".into()],
        ..Default::default()
    });
    let target = TestSshd::start();
    // The target's client key must also log in on the jump host.
    jump.authorize(&target.client_key.with_extension("pub"));
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "{}{}",
            std::fs::read_to_string(&jump.known_hosts).unwrap(),
            std::fs::read_to_string(&target.known_hosts).unwrap()
        ),
    )
    .unwrap();
    let mut host = target.host("behind");
    host.ssh.known_hosts = Some(kh.display().to_string());
    host.ssh.jump_host = Some(format!("root@127.0.0.1:{}", jump.port));
    let s = Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\njump log:\n{}", jump.log_text()));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.run(&format!("echo {i}")).await },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap().stdout_str(), format!("{i}\n"));
    }
    let log = jump.log_text();
    assert!(
        log.contains(&format!("target 127.0.0.1 port {}", target.port)),
        "the jump host did not forward to the target:\n{log}"
    );

    // The jump host's own key is verified too.
    std::fs::copy(&target.known_hosts, &kh).unwrap();
    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("unknown jump host key must be refused");
    let msg = full(&err);
    assert!(
        msg.contains("jump host") && msg.contains("unknown host key"),
        "{msg}"
    );
    assert!(msg.contains(&format!("[127.0.0.1]:{}", jump.port)), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_key_with_passphrase_from_env() {
    let sshd = TestSshd::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id_enc");
    keygen(&key, "correct horse", "enc");
    sshd.authorize(&key.with_extension("pub"));
    let mut host = sshd.host("h1");
    host.ssh.private_key = Some(key.display().to_string());
    let var = format!("PGD_TEST_PASSPHRASE_{}", sshd.port);
    host.ssh.passphrase_env = Some(var.clone());

    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("missing passphrase must fail");
    assert!(full(&err).contains(&var), "{}", full(&err));

    std::env::set_var(&var, "wrong");
    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("wrong passphrase must fail");
    assert!(full(&err).contains("wrong passphrase"), "{}", full(&err));

    std::env::set_var(&var, "correct horse");
    let s = Session::connect_with_agent(&host, &opts(), None)
        .await
        .unwrap();
    assert!(s.run("true").await.is_ok());
    std::env::remove_var(&var);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssh_agent_authentication() {
    let sshd = TestSshd::start();
    let agent = TestAgent::start();
    agent.add(&sshd.client_key);
    let mut host = sshd.host("h1");
    host.ssh.private_key = None;
    let s = Session::connect_with_agent(&host, &opts(), Some(&agent.socket))
        .await
        .unwrap();
    assert_eq!(
        s.run("echo via-agent").await.unwrap().stdout_str(),
        "via-agent\n"
    );

    // An empty agent and no usable key file: a clear authentication error.
    let empty = TestAgent::start();
    let home = tempfile::tempdir().unwrap();
    let other = home.path().join("id_other");
    keygen(&other, "", "other");
    host.ssh.private_key = Some(other.display().to_string());
    let err = Session::connect_with_agent(&host, &opts(), Some(&empty.socket))
        .await
        .err()
        .expect("must fail");
    let msg = full(&err);
    assert!(msg.contains("authentication as root failed"), "{msg}");
    assert!(msg.contains("authorized_keys"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_refused_and_timeout_are_clear() {
    let sshd = TestSshd::start();
    let mut host = sshd.host("h1");
    host.ssh.port = crate::support::free_port();
    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("refused");
    let msg = full(&err);
    assert!(msg.starts_with("h1: cannot connect to 127.0.0.1:"), "{msg}");
    assert!(msg.contains("sshd running"), "{msg}");

    // A listener that never speaks SSH: the handshake times out after connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host.ssh.port = silent.local_addr().unwrap().port();
    host.ssh.connect_timeout = 1;
    let t0 = Instant::now();
    let err = Session::connect_with_agent(&host, &opts(), None)
        .await
        .err()
        .expect("timeout");
    let msg = full(&err);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(msg.contains("timed out after 1 s"), "{msg}");
    assert!(msg.contains("connect_timeout"), "{msg}");
    drop(silent);

    // A connection that dies under a session gives an error naming the host and command.
    let mut sshd = sshd;
    let s = connect(&sshd).await;
    sshd.kill();
    let err = s.run("echo after-kill").await.unwrap_err();
    let msg = full(&err);
    assert!(
        msg.contains("h1") && msg.contains("echo after-kill"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_servers_in_parallel() {
    let t_start = Instant::now();
    let servers = TestSshd::start_many(50);
    println!("started 50 sshd: {:?}", t_start.elapsed());
    let t0 = Instant::now();
    let sessions = futures::future::join_all(servers.iter().enumerate().map(|(i, d)| {
        let h = d.host(&format!("h{i}"));
        async move { Session::connect_with_agent(&h, &ConnectOptions::default(), None).await }
    }))
    .await;
    let sessions: Vec<Session> = sessions.into_iter().map(|r| r.unwrap()).collect();
    println!("50 connections in parallel: {:?}", t0.elapsed());
    let outs = futures::future::join_all(sessions.iter().map(|s| s.run("echo ok"))).await;
    for (i, o) in outs.into_iter().enumerate() {
        assert_eq!(o.unwrap().stdout_str(), "ok\n", "h{i}");
    }
}
