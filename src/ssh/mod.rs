//! SSH transport: one connection per host, many channels on it.
//!
//! CONTRACT (implemented by the ssh module owner; the engine codes against exactly this API).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::inventory::{Become, Host};

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SshError {
    #[error("{host}: {message}")]
    #[diagnostic(code(pgdeploy::ssh))]
    Other {
        host: String,
        message: String,
        #[help]
        help: Option<String>,
    },
}

/// Options that are not in the inventory (command-line flags).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Accept and record unknown host keys (like OpenSSH's StrictHostKeyChecking=accept-new).
    pub accept_new_host_keys: bool,
    /// Override the known_hosts file for every host.
    pub known_hosts: Option<PathBuf>,
}

/// Result of one command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One live connection to a host. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct Session {
    host: String,
    _become: Become,
}

impl Session {
    pub async fn connect(_host: &Host, _opts: &ConnectOptions) -> Result<Session, SshError> {
        unimplemented!()
    }
    /// Host name (from the inventory), for messages.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Run a shell command (through `sudo` when the host's `become` is sudo). Non-zero exit is
    /// NOT an error here; transport failures are.
    pub async fn exec(&self, _cmd: &str, _stdin: Option<&[u8]>) -> Result<Output, SshError> {
        unimplemented!()
    }
    /// Like exec but a non-zero exit becomes an SshError naming the host, the command and stderr.
    pub async fn run(&self, _cmd: &str) -> Result<Output, SshError> {
        unimplemented!()
    }
    /// Read a file; Ok(None) if it does not exist.
    pub async fn read_file(&self, _path: &str) -> Result<Option<Vec<u8>>, SshError> {
        unimplemented!()
    }
    /// Atomically write a file (temp file in the same dir + rename) with mode/owner/group.
    /// Compares SHA-256 first; returns Ok(false) if content, mode and owner were already right.
    pub async fn write_file(
        &self,
        _path: &str,
        _content: &[u8],
        _mode: u32,
        _owner: &str,
        _group: &str,
    ) -> Result<bool, SshError> {
        unimplemented!()
    }
    /// Stream a local file to the host atomically, without holding it in memory.
    pub async fn upload(&self, _local: &Path, _remote: &str, _mode: u32) -> Result<(), SshError> {
        unimplemented!()
    }
    /// Close the connection.
    pub async fn close(&self) {}
}

pub fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}
