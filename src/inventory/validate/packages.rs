//! `packages`: where the Debian packages come from.

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

impl Checker<'_> {
    pub(super) fn packages(&mut self, inv: &Inventory) {
        let p = &inv.packages;
        if p.source == crate::inventory::PackageSource::Bundle && p.bundle_dir.trim().is_empty() {
            self.push(
                Problem::new("`packages.bundle_dir` is empty but `packages.source` is `bundle`")
                    .label(
                        self.exact(&[Seg::Key("packages"), Seg::Key("bundle_dir")]),
                        "empty",
                    )
                    .help("give the directory `pgdeploy bundle` writes to (relative to the inventory), e.g. `bundle`"),
            );
        }
        for (i, src) in p.debian_sources.iter().enumerate() {
            if src.trim().is_empty() {
                self.push(
                    Problem::new("an entry of `packages.debian_sources` is empty")
                        .label(
                            self.exact(&[
                                Seg::Key("packages"),
                                Seg::Key("debian_sources"),
                                Seg::Index(i),
                            ]),
                            "empty",
                        )
                        .help("remove it, or give an apt source line (deb URI SUITE COMPONENTS)"),
                );
            }
        }
    }
}
