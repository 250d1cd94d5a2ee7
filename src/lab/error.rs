//! Errors of the lab: each one names the thing that failed and says what to do.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, LabError>;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LabError {
    #[error(
        "pgdeploy lab must run as root (it creates network namespaces, mounts and containers)"
    )]
    #[diagnostic(code(lab::not_root), help("run it as root, e.g. with sudo"))]
    NotRoot,

    #[error("`{tool}` was not found in PATH")]
    #[diagnostic(
        code(lab::missing_tool),
        help("install the Debian package that provides it: apt-get install {package}")
    )]
    MissingTool { tool: String, package: String },

    #[error("a lab is already up (state file {0})")]
    #[diagnostic(code(lab::already_up), help("run `pgdeploy lab down` first"))]
    AlreadyUp(PathBuf),

    #[error("leftovers of an earlier lab exist: {0}")]
    #[diagnostic(code(lab::leftovers), help("run `pgdeploy lab down` to remove them"))]
    Leftovers(String),

    #[error("{0} already exists; the lab does not overwrite files it did not create")]
    #[diagnostic(
        code(lab::file_exists),
        help("choose another --dir, or remove the file if it is left from an earlier lab")
    )]
    FileExists(PathBuf),

    #[error("no lab is up (no state file {0})")]
    #[diagnostic(code(lab::not_up), help("start one with `pgdeploy lab up`"))]
    NotUp(PathBuf),

    #[error("network interface {0} already exists and was not created by pgdeploy lab")]
    #[diagnostic(
        code(lab::bridge_in_use),
        help("the lab needs this bridge name for itself: remove or rename that interface first")
    )]
    BridgeInUse(String),

    #[error("the lab subnet {subnet} is already in use: {detail}")]
    #[diagnostic(
        code(lab::subnet_in_use),
        help("the lab needs this subnet for its bridge: remove that address first")
    )]
    SubnetInUse { subnet: String, detail: String },

    #[error("unknown lab host `{host}` (the lab has: {known})")]
    #[diagnostic(code(lab::unknown_host))]
    UnknownHost { host: String, known: String },

    #[error("host {0} is already running")]
    #[diagnostic(
        code(lab::host_running),
        help("use `pgdeploy lab kill {0}` first to power it off")
    )]
    HostRunning(String),

    #[error("invalid lab options: {0}")]
    #[diagnostic(code(lab::invalid))]
    Invalid(String),

    #[error("`{cmd}` failed: {detail}")]
    #[diagnostic(code(lab::command))]
    Command { cmd: String, detail: String },

    #[error("{what}: {source}")]
    #[diagnostic(code(lab::io))]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("timed out after {secs} s waiting for {what}")]
    #[diagnostic(code(lab::timeout), help("{hint}"))]
    Timeout {
        what: String,
        secs: u64,
        hint: String,
    },

    #[error("host {host}: systemd-nspawn exited during boot; last lines of {log}:\n{tail}")]
    #[diagnostic(code(lab::host_died))]
    HostDied {
        host: String,
        log: PathBuf,
        tail: String,
    },

    #[error("named (BIND) exited during start; last lines of {log}:\n{tail}")]
    #[diagnostic(code(lab::named_died))]
    NamedDied { log: PathBuf, tail: String },

    #[error("state file {path} is unreadable: {detail}")]
    #[diagnostic(
        code(lab::bad_state),
        help("`pgdeploy lab down` still removes a lab's leftovers without a readable state file")
    )]
    BadState { path: PathBuf, detail: String },

    #[error("the Debian mirror could not be found in {0}")]
    #[diagnostic(
        code(lab::no_mirror),
        help(
            "configure a Debian source for apt on this machine (its mirror serves every release)"
        )
    )]
    NoMirror(String),

    #[error("lab down left things behind: {0}")]
    #[diagnostic(
        code(lab::not_clean),
        help("run `pgdeploy lab down` again; it is idempotent")
    )]
    NotClean(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}
