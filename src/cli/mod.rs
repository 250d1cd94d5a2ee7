//! The command line of `dns`, `bundle`, `lab` and `state`: their arguments, turned into the library's
//! options, and everything they print. Like the other commands in `main.rs`.

pub mod backup;
pub mod bundle;
pub mod dns;
pub mod lab;
pub mod state;
