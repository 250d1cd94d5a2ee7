//! The command line of `dns`, `bundle` and `lab`: their arguments, turned into the library's
//! options, and everything they print. Like the other commands in `main.rs`.

pub mod bundle;
pub mod dns;
pub mod lab;
