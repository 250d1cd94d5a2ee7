//! One integration-test binary; each module owns one area.

mod backup;
mod bundle_tests;
mod cluster;
mod dns;
mod e2e;
mod engine;
mod inventory;
mod journal;
mod lab;
mod ssh;
mod support;
