//! The one cryptography backend of the binary: ring, through rustls, russh and hickory.
//!
//! reqwest is built without a provider of its own (its default would compile aws-lc-rs next to
//! ring), so the ring provider is made the process default before any HTTP client is built.

use std::sync::{Arc, Once};

/// The rustls provider every TLS client of pgdeploy uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make ring the process-wide rustls default (idempotent; needed before `reqwest::Client`).
pub fn install_default() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only means another provider was installed first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
