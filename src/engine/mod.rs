//! The engine: probe -> plan -> apply.
