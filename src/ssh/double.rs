//! A recording and replaying double of the host executor, for tests of orchestration without
//! a lab: "these facts in, these steps out, run in this order".
//!
//! A [`Session`](super::Session) made with [`Session::double`](super::Session::double) sends
//! every command and every HTTP(S) request to a [`HostDouble`] instead of an SSH connection.
//! [`Script`] is the double tests use: it records each call (host and request) in order and
//! answers from rules that the test writes, which may keep state (a member that was started
//! leads from then on). Real hosts are tested by the end-to-end tests; this layer checks which
//! commands the engine sends, and in which order, for given answers.

use super::https::HttpResponse;
use super::{Output, SshError};
use std::sync::{Arc, Mutex};

/// What a session asks of its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A shell command (before any sudo wrapping), with its standard input.
    Exec { cmd: String, stdin: Vec<u8> },
    /// GET of `url` (`https://address:port/path`) through the host.
    Get { url: String },
    /// POST of `body` to `url` through the host.
    Post { url: String, body: Vec<u8> },
}

impl Call {
    /// The command, or `GET url`.
    pub fn text(&self) -> String {
        match self {
            Call::Exec { cmd, .. } => cmd.clone(),
            Call::Get { url } => format!("GET {url}"),
            Call::Post { url, body } => format!("POST {url} {}", String::from_utf8_lossy(body)),
        }
    }
}

/// What the host answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A command's exit status and output.
    Exit(Output),
    /// An HTTP status and body.
    Http(u16, Vec<u8>),
    /// The service or connection does not answer.
    Fail(String),
}

impl Answer {
    /// Exit status 0 with `stdout`.
    pub fn ok(stdout: &str) -> Answer {
        Answer::Exit(Output {
            status: 0,
            stdout: stdout.as_bytes().to_vec(),
            stderr: Vec::new(),
        })
    }
    /// A failed command.
    pub fn exit(status: u32, stderr: &str) -> Answer {
        Answer::Exit(Output {
            status,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        })
    }
    /// HTTP 200 with a JSON body.
    pub fn json(v: &serde_json::Value) -> Answer {
        Answer::Http(200, v.to_string().into_bytes())
    }
}

/// Stands in for the hosts of a run.
pub trait HostDouble: Send + Sync {
    fn call(&self, host: &str, call: &Call) -> Answer;
}

type Rule<S> = Box<dyn Fn(&str, &Call, &mut S) -> Option<Answer> + Send + Sync>;

/// A double that records every call and answers from rules over a state `S`. The first rule
/// that answers wins; a call no rule answers is recorded and fails (exit status 127), so a
/// test sees commands it did not expect.
pub struct Script<S> {
    state: Mutex<S>,
    rules: Vec<Rule<S>>,
    calls: Mutex<Vec<(String, Call)>>,
}

impl<S: Send + 'static> Script<S> {
    pub fn new(state: S) -> Self {
        Script {
            state: Mutex::new(state),
            rules: Vec::new(),
            calls: Mutex::new(Vec::new()),
        }
    }
    /// Add a rule: `(host, call, state) -> Some(answer)` when it applies.
    pub fn rule(
        mut self,
        f: impl Fn(&str, &Call, &mut S) -> Option<Answer> + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Box::new(f));
        self
    }
    /// Every call so far, in order: (host, call).
    pub fn calls(&self) -> Vec<(String, Call)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
    /// The calls whose text contains `needle`, as `host: text`, in order.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.calls()
            .iter()
            .filter(|(_, c)| c.text().contains(needle))
            .map(|(h, c)| format!("{h}: {}", c.text()))
            .collect()
    }
    /// Read the state.
    pub fn with_state<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&s)
    }
}

impl<S: Send + 'static> HostDouble for Script<S> {
    fn call(&self, host: &str, call: &Call) -> Answer {
        if let Ok(mut c) = self.calls.lock() {
            c.push((host.to_string(), call.clone()));
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for r in &self.rules {
            if let Some(a) = r(host, call, &mut state) {
                return a;
            }
        }
        Answer::exit(
            127,
            &format!("the test double has no answer for `{}`", call.text()),
        )
    }
}

pub(crate) fn exec(
    d: &Arc<dyn HostDouble>,
    host: &str,
    cmd: &str,
    stdin: Vec<u8>,
) -> Result<Output, SshError> {
    match d.call(
        host,
        &Call::Exec {
            cmd: cmd.to_string(),
            stdin,
        },
    ) {
        Answer::Exit(o) => Ok(o),
        Answer::Http(status, body) => Ok(Output {
            status: u32::from(status != 200),
            stdout: body,
            stderr: Vec::new(),
        }),
        Answer::Fail(why) => Err(SshError::new(host, why, None)),
    }
}

pub(crate) fn request(
    d: &Arc<dyn HostDouble>,
    host: &str,
    url: &str,
    body: Option<&[u8]>,
) -> Result<HttpResponse, SshError> {
    let call = match body {
        None => Call::Get {
            url: url.to_string(),
        },
        Some(b) => Call::Post {
            url: url.to_string(),
            body: b.to_vec(),
        },
    };
    match d.call(host, &call) {
        Answer::Http(status, body) => Ok(HttpResponse { status, body }),
        Answer::Exit(o) => Ok(HttpResponse {
            status: if o.ok() { 200 } else { 500 },
            body: o.stdout,
        }),
        Answer::Fail(why) => Err(SshError::new(host, why, None)),
    }
}
