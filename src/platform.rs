//! The Debian releases pgdeploy deploys onto, and what differs between them.
//!
//! One set of roles and templates serves every release: where a release differs, the template
//! context carries a value from here (`platform.*`), never a second copy of a file.

use serde::{Deserialize, Serialize};

/// A Debian release, as written in the inventory's `platform` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, Default)]
pub enum Platform {
    /// Debian 12 "bookworm": PostgreSQL 15, Patroni 3.0, etcd 3.4, HAProxy 2.6.
    #[serde(rename = "debian-12")]
    Debian12,
    /// Debian 13 "trixie": PostgreSQL 17, Patroni 4.0, etcd 3.5, HAProxy 3.0.
    #[default]
    #[serde(rename = "debian-13")]
    Debian13,
}

/// Patroni's timings (seconds): leader key TTL, pause between HA loops, DCS/PostgreSQL retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatroniTimings {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

impl Platform {
    pub const ALL: [Platform; 2] = [Platform::Debian12, Platform::Debian13];

    /// The inventory's spelling, e.g. "debian-13".
    pub fn name(self) -> &'static str {
        match self {
            Platform::Debian12 => "debian-12",
            Platform::Debian13 => "debian-13",
        }
    }

    /// `VERSION_ID` in the release's /etc/os-release.
    pub fn version_id(self) -> &'static str {
        match self {
            Platform::Debian12 => "12",
            Platform::Debian13 => "13",
        }
    }

    /// The Debian codename (debootstrap suite, apt suite prefix).
    pub fn codename(self) -> &'static str {
        match self {
            Platform::Debian12 => "bookworm",
            Platform::Debian13 => "trixie",
        }
    }

    /// The release with this `VERSION_ID` (from a host's /etc/os-release), if pgdeploy knows it.
    pub fn from_version_id(id: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.version_id() == id)
    }

    /// The PostgreSQL minor the release ships ("MAJOR.MINOR"): the default `postgres.version`.
    pub fn default_postgres(self) -> &'static str {
        match self {
            Platform::Debian12 => "15.18",
            Platform::Debian13 => "17.12",
        }
    }

    /// The one PostgreSQL major the release carries.
    pub fn postgres_major(self) -> &'static str {
        match self {
            Platform::Debian12 => "15",
            Platform::Debian13 => "17",
        }
    }

    /// The Patroni major the release ships.
    pub fn patroni_major(self) -> u32 {
        match self {
            Platform::Debian12 => 3,
            Platform::Debian13 => 4,
        }
    }

    /// Whether the release's pgBackRest (2.45 on Debian 12, 2.55 on 13) has
    /// `backup-standby=prefer`: back up from a replica, or from the leader when none streams.
    pub fn pgbackrest_standby_prefer(self) -> bool {
        matches!(self, Platform::Debian13)
    }

    /// Whether the release's pgBackRest matches a host it connects to by address against the
    /// certificate's IP address names. 2.45 (Debian 12) compares the address with the Common
    /// Name and the DNS names only ("unable to find hostname '10.231.0.21' in certificate
    /// common name or subject alternative names", seen on the lab); 2.55 (Debian 13) takes
    /// the IP address names.
    pub fn pgbackrest_matches_ip_names(self) -> bool {
        matches!(self, Platform::Debian13)
    }

    /// Whether the release's etcd (3.5 on Debian 13; 3.4 on 12 has no such setting) takes
    /// `--bcrypt-cost`, the work factor of the password hashes it stores and checks on each
    /// login.
    pub fn etcd_sets_bcrypt_cost(self) -> bool {
        matches!(self, Platform::Debian13)
    }

    /// pgdeploy's default timings on this release. Patroni 4 raises a `ttl` below 20 to 20
    /// (with only a warning in its log), so the fastest timings it honours as written are
    /// 20/2/3; Patroni 3 takes 10/2/3.
    pub fn default_patroni_timings(self) -> PatroniTimings {
        match self {
            Platform::Debian12 => PatroniTimings {
                ttl: 10,
                loop_wait: 2,
                retry_timeout: 3,
            },
            Platform::Debian13 => PatroniTimings {
                ttl: 20,
                loop_wait: 2,
                retry_timeout: 3,
            },
        }
    }

    /// The smallest values the release's Patroni honours as written; below them it silently
    /// substitutes its own.
    pub fn min_patroni_timings(self) -> PatroniTimings {
        match self {
            Platform::Debian12 => PatroniTimings {
                ttl: 1,
                loop_wait: 1,
                retry_timeout: 1,
            },
            Platform::Debian13 => PatroniTimings {
                ttl: 20,
                loop_wait: 1,
                retry_timeout: 3,
            },
        }
    }

    /// What the release runs, for messages: "Debian 13 (trixie)".
    pub fn describe(self) -> String {
        format!("Debian {} ({})", self.version_id(), self.codename())
    }

    /// Facts templates branch on (`platform.*` in the template context).
    pub fn template_json(self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name(),
            "debian": self.version_id(),
            "codename": self.codename(),
            "patroni_major": self.patroni_major(),
            "etcd_sets_bcrypt_cost": self.etcd_sets_bcrypt_cost(),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_honour_their_own_minimums() {
        for p in Platform::ALL {
            let d = p.default_patroni_timings();
            let m = p.min_patroni_timings();
            assert!(d.ttl >= m.ttl && d.loop_wait >= m.loop_wait);
            assert!(d.retry_timeout >= m.retry_timeout);
            assert!(d.ttl >= d.loop_wait + 2 * d.retry_timeout, "{p}");
            assert!(p.default_postgres().starts_with(p.postgres_major()));
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Platform::ALL {
            let y: Platform = serde_json::from_value(serde_json::json!(p.name())).unwrap();
            assert_eq!(y, p);
            assert_eq!(Platform::from_version_id(p.version_id()), Some(p));
        }
        assert_eq!(Platform::default(), Platform::Debian13);
        assert_eq!(Platform::from_version_id("11"), None);
    }
}
