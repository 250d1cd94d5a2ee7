//! `cluster`: the cluster's name.

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

/// `[a-z0-9][a-z0-9-]*`: the cluster name is Patroni's scope, etcd's cluster token and a
/// directory name on the control machine.
pub fn is_valid_cluster_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Checker<'_> {
    pub(super) fn cluster(&mut self, inv: &Inventory) {
        let name = &inv.cluster.name;
        if !is_valid_cluster_name(name) {
            let path = [Seg::Key("cluster"), Seg::Key("name")];
            let why = if name.is_empty() {
                "it is empty".to_string()
            } else if name.chars().any(|c| c.is_ascii_uppercase()) {
                "it has uppercase letters".to_string()
            } else {
                "it may only hold lowercase letters, digits and `-`, and must start with a letter \
                 or digit"
                    .to_string()
            };
            self.push(
                Problem::new(format!("cluster name `{name}` is not valid: {why}"))
                    .label(self.exact(&path), "invalid cluster name")
                    .help(
                        "use lowercase letters, digits and `-` (e.g. `pg-main`): the name is \
                         Patroni's scope, etcd's cluster token and a directory name",
                    ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names() {
        for ok in ["pg", "pg-main", "0db", "a1-b2"] {
            assert!(is_valid_cluster_name(ok), "{ok}");
        }
        for bad in ["", "-pg", "Pg", "pg_main", "pg.main", "pg main", "ñ"] {
            assert!(!is_valid_cluster_name(bad), "{bad}");
        }
    }
}
