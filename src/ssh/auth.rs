//! Client authentication (ssh-agent, key files) and the secrets pgdeploy may have to ask for
//! (key passphrases, the sudo password): from an environment variable, else prompted once per
//! process on the terminal, never when stdin is not a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};

use super::{Handler, SshError};
use crate::inventory::Ssh;

/// A secret string whose Debug output is redacted.
#[derive(Clone)]
pub struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Part of every error that only a terminal could have avoided (see [`super::persist`]).
pub(crate) const NO_TERMINAL: &str = "there is no terminal";

static PASSPHRASES: Mutex<Option<HashMap<PathBuf, Secret>>> = Mutex::new(None);
static SUDO_PASSWORD: Mutex<Option<Secret>> = Mutex::new(None);
/// Serialises terminal prompts so parallel connections ask only once.
static PROMPT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    PathBuf::from(p)
}

pub(crate) fn resolve_path(p: &str) -> PathBuf {
    expand_home(p)
}

async fn prompt(text: String) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || rpassword::prompt_password(text))
        .await
        .map_err(std::io::Error::other)?
}

fn env_secret(var: &str) -> Option<Secret> {
    std::env::var(var).ok().map(Secret)
}

async fn key_passphrase(label: &str, path: &Path, ssh: &Ssh) -> Result<Secret, SshError> {
    if let Some(var) = &ssh.passphrase_env {
        return env_secret(var).ok_or_else(|| {
            SshError::new(
                label,
                format!(
                    "private key {} is encrypted and the environment variable {var} (ssh.passphrase_env) is not set",
                    path.display()
                ),
                Some(format!("export {var} with the key's passphrase, or load the key into ssh-agent")),
            )
        });
    }
    let cached = |p: &Path| {
        PASSPHRASES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|m| m.get(p).cloned())
    };
    if let Some(s) = cached(path) {
        return Ok(s);
    }
    if !std::io::stdin().is_terminal() {
        return Err(SshError::new(
            label,
            format!(
                "private key {} is encrypted and {NO_TERMINAL} to ask for its passphrase",
                path.display()
            ),
            Some("set ssh.passphrase_env to the name of an environment variable that holds the passphrase, or load the key into ssh-agent (ssh-add)".into()),
        ));
    }
    let _g = PROMPT.lock().await;
    if let Some(s) = cached(path) {
        return Ok(s);
    }
    let text = format!("Passphrase for {}: ", path.display());
    prompt(text).await.map(Secret).map_err(|e| {
        SshError::new(
            label,
            format!("could not read the passphrase of {}: {e}", path.display()),
            Some("set ssh.passphrase_env, or load the key into ssh-agent".into()),
        )
    })
}

fn remember_passphrase(path: &Path, s: Secret) {
    PASSPHRASES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(path.to_path_buf(), s);
}

/// Where the sudo password came from, for messages.
pub(crate) enum SudoSource {
    Env(String),
    Prompt,
}

/// The sudo password for `user` on `label`: env var (ssh.sudo_password_env), else prompted once
/// per process (the same value is reused for every host).
pub(crate) async fn sudo_password(
    label: &str,
    user: &str,
    ssh: &Ssh,
) -> Result<(Secret, SudoSource), SshError> {
    if let Some(var) = &ssh.sudo_password_env {
        return env_secret(var)
            .map(|s| (s, SudoSource::Env(var.clone())))
            .ok_or_else(|| {
                SshError::new(
                    label,
                    format!("sudo needs a password for {user}, and the environment variable {var} (ssh.sudo_password_env) is not set"),
                    Some(format!("export {var} with the sudo password of {user}, or allow passwordless sudo for {user}")),
                )
            });
    }
    let cached = || {
        SUDO_PASSWORD
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    if let Some(s) = cached() {
        return Ok((s, SudoSource::Prompt));
    }
    if !std::io::stdin().is_terminal() {
        return Err(SshError::new(
            label,
            format!("sudo needs a password for {user}, and there is no terminal to ask for it"),
            Some("set ssh.sudo_password_env to the name of an environment variable that holds the password, run from a terminal, or allow passwordless sudo (NOPASSWD) for this user".into()),
        ));
    }
    let _g = PROMPT.lock().await;
    if let Some(s) = cached() {
        return Ok((s, SudoSource::Prompt));
    }
    let s = prompt(format!("sudo password for {user} (used for every host): "))
        .await
        .map_err(|e| {
            SshError::new(
                label,
                format!("could not read the sudo password: {e}"),
                Some("set ssh.sudo_password_env instead".into()),
            )
        })?;
    Ok((Secret(s), SudoSource::Prompt))
}

pub(crate) fn remember_sudo_password(s: &Secret) {
    *SUDO_PASSWORD.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
}

pub(crate) fn forget_sudo_password() {
    *SUDO_PASSWORD.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn default_keys() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let ssh = PathBuf::from(home).join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| ssh.join(n))
        .filter(|p| p.exists())
        .collect()
}

async fn load_key(label: &str, path: &Path, ssh: &Ssh) -> Result<PrivateKey, SshError> {
    let read_err = |e: russh::keys::Error| {
        SshError::new(
            label,
            format!("cannot load private key {}: {e}", path.display()),
            Some("check ssh.private_key (an OpenSSH/PEM private key file readable by you)".into()),
        )
    };
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let pass = key_passphrase(label, path, ssh).await?;
            match russh::keys::load_secret_key(path, Some(&pass.0)) {
                Ok(k) => {
                    if ssh.passphrase_env.is_none() {
                        remember_passphrase(path, pass);
                    }
                    Ok(k)
                }
                Err(e) => Err(SshError::new(
                    label,
                    format!(
                        "cannot decrypt private key {} (wrong passphrase?): {e}",
                        path.display()
                    ),
                    Some(match &ssh.passphrase_env {
                        Some(v) => format!("check the passphrase in ${v}"),
                        None => "run again and type the key's passphrase".into(),
                    }),
                )),
            }
        }
        Err(e) => Err(read_err(e)),
    }
}

/// Authenticate `user`: agent identities first, then the key file(s).
pub(crate) async fn authenticate(
    handle: &mut russh::client::Handle<Handler>,
    label: &str,
    user: &str,
    ssh: &Ssh,
    agent_socket: Option<&Path>,
) -> Result<(), SshError> {
    let rsa_hash: Option<HashAlg> = match handle.best_supported_rsa_hash().await {
        Ok(h) => h.flatten(),
        Err(_) => Some(HashAlg::Sha256),
    };
    let mut tried: Vec<String> = Vec::new();

    if let Some(sock) = agent_socket {
        match AgentClient::connect_uds(sock).await {
            Ok(mut agent) => match agent.request_identities().await {
                Ok(ids) => {
                    for id in ids {
                        let pk = id.public_key().into_owned();
                        let fp = super::known_hosts::fingerprint(&pk);
                        match handle
                            .authenticate_publickey_with(user, pk, rsa_hash, &mut agent)
                            .await
                        {
                            Ok(r) if r.success() => return Ok(()),
                            Ok(_) => tried.push(format!("agent key {fp}")),
                            Err(e) => tried.push(format!("agent key {fp} ({e})")),
                        }
                    }
                    if tried.is_empty() {
                        tried.push("ssh-agent (no keys loaded)".into());
                    }
                }
                Err(e) => tried.push(format!("ssh-agent ({e})")),
            },
            Err(e) => tried.push(format!("ssh-agent at {} ({e})", sock.display())),
        }
    }

    let files = match &ssh.private_key {
        Some(p) => {
            let p = expand_home(p);
            if !p.exists() {
                return Err(SshError::new(
                    label,
                    format!("private key file {} (ssh.private_key) does not exist", p.display()),
                    Some("fix ssh.private_key in the inventory, or remove it to use ssh-agent and ~/.ssh/id_*".into()),
                ));
            }
            vec![p]
        }
        None => default_keys(),
    };
    for path in files {
        let key = load_key(label, &path, ssh).await?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        match handle.authenticate_publickey(user, key).await {
            Ok(r) if r.success() => return Ok(()),
            Ok(_) => tried.push(format!("key {}", path.display())),
            Err(e) => {
                return Err(SshError::new(
                    label,
                    format!("connection lost while authenticating as {user}: {e}"),
                    Some("check the host's sshd logs; run again".into()),
                ))
            }
        }
    }
    let tried = if tried.is_empty() {
        "no ssh-agent (SSH_AUTH_SOCK unset) and no key in ~/.ssh/id_ed25519, id_ecdsa, id_rsa"
            .to_string()
    } else {
        tried.join(", ")
    };
    Err(SshError::new(
        label,
        format!("SSH authentication as {user} failed; tried: {tried}"),
        Some(format!(
            "add your public key to ~{user}/.ssh/authorized_keys on the host, or set ssh.private_key / ssh.user in the inventory, or load the right key into ssh-agent"
        )),
    ))
}
