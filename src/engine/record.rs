//! Recording what `apply` changed: every change executed through the engine's primitives
//! (`exec::apply_changes`, `exec::install_packages`), orchestration steps (`Ctx::step`) and DNS
//! updates is reported, with its result and duration, to the observer of the phase applied.
//!
//! The primitives take a host session, not the run context, so the phase and observer travel
//! with the task (like a tracing span): `engine::apply` runs each phase inside [`in_phase`].
//! Outside such a scope (`check`, probes, tests calling the primitives directly) nothing is
//! recorded.

use super::Observer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// One change (or orchestration step) made on a host, as told to [`Observer::change_done`].
#[derive(Debug, Clone, Copy)]
pub struct Done<'a> {
    pub phase: &'a str,
    /// The host, or for DNS the provider ("rfc2136 10.0.0.1:53 (zone db.example.)").
    pub host: &'a str,
    /// One-line summary, as `check` prints it (`Change::summary`).
    pub change: &'a str,
    /// `None`: done; `Some(message)`: it failed.
    pub error: Option<&'a str>,
    pub elapsed: Duration,
}

#[derive(Clone)]
struct Scope {
    observer: Arc<dyn Observer>,
    phase: Arc<str>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Run `fut` as phase `phase`: the changes it makes are reported to `observer`.
pub async fn in_phase<F: Future>(observer: Arc<dyn Observer>, phase: &str, fut: F) -> F::Output {
    SCOPE
        .scope(
            Scope {
                observer,
                phase: phase.into(),
            },
            fut,
        )
        .await
}

/// Report one change made on `host` (a no-op outside [`in_phase`]).
pub fn done(host: &str, change: &str, error: Option<&str>, elapsed: Duration) {
    let _ = SCOPE.try_with(|s| {
        s.observer.change_done(&Done {
            phase: &s.phase,
            host,
            change,
            error,
            elapsed,
        })
    });
}

/// Report the outcome of `result` (see [`done`]).
pub fn result<T>(host: &str, change: &str, result: &miette::Result<T>, elapsed: Duration) {
    match result {
        Ok(_) => done(host, change, None, elapsed),
        Err(e) => done(host, change, Some(&e.to_string()), elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);
    impl Observer for Collect {
        fn change_done(&self, d: &Done) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {} {} {:?}", d.phase, d.host, d.change, d.error));
        }
    }

    #[tokio::test]
    async fn changes_are_reported_inside_a_phase_only() {
        let c = Arc::new(Collect::default());
        done("h0", "outside", None, Duration::ZERO);
        in_phase(c.clone(), "common", async {
            // joined futures run in the same task and see the scope
            futures::future::join(
                async { done("h1", "+ file /x", None, Duration::ZERO) },
                async { done("h2", "! run `x`", Some("boom"), Duration::ZERO) },
            )
            .await;
        })
        .await;
        let got = c.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                "common h1 + file /x None".to_string(),
                "common h2 ! run `x` Some(\"boom\")".to_string()
            ]
        );
    }
}
