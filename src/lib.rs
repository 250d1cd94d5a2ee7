//! pgdeploy: agentless deployment of highly available PostgreSQL over SSH.
//!
//! probe (read-only, per host) -> plan (pure) -> apply (the only mutator); `check` prints the plan.

pub mod backup;
pub mod bundle;
pub mod catalog;
pub mod clock;
pub mod connect;
pub mod crypto;
pub mod dns;
pub mod engine;
pub mod inventory;
pub mod journal;
pub mod lab;
pub mod ops;
pub mod phases;
pub mod pki;
pub mod platform;
pub mod report;
pub mod secrets;
pub mod shell;
pub mod ssh;
pub mod state;
pub mod status;
