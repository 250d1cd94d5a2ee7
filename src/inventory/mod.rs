//! Inventory: model, loading (YAML with file/line/column errors) and validation.
//!
//! [`load`] reads a file, [`load_str`] text already in memory. Both report YAML syntax and type
//! errors (one, the first) and semantic problems (all at once) as an [`InventoryError`] inside a
//! `miette::Report`, and return non-fatal [`Warning`]s with the inventory. [`render_plain`]
//! renders any diagnostic deterministically (no colours, fixed width).

mod diag;
mod load;
mod model;
mod tree;
mod validate;

pub use diag::{render_plain, InventoryError, Problem};
pub(crate) use load::secret_like;
pub use load::{load, load_str};
pub use model::*;
pub use validate::{
    check_address, fqdn, in_zone, is_env_var_name, is_valid_cluster_name, is_valid_fqdn,
    is_valid_host_name, is_valid_parameter_name, is_valid_postgres_version, is_valid_user_name,
    parse_dns_server, parse_jump_host, patroni_timing_ok, postgres_major, JumpHost, DNS_PROVIDERS,
    MANAGED_PARAMETERS, TSIG_ALGORITHMS,
};

/// Warnings that do not stop a run (e.g. an even number of etcd members). The text starts with
/// `file:line:column: ` when the warning concerns a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
