//! `patroni`: the HA timings.

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

/// Patroni's rule for its timings: the leader must be able to renew its key within `ttl` even
/// when a DCS call times out and is retried: `ttl >= loop_wait + 2 * retry_timeout`.
pub fn patroni_timing_ok(ttl: u32, loop_wait: u32, retry_timeout: u32) -> bool {
    u64::from(ttl) >= u64::from(loop_wait) + 2 * u64::from(retry_timeout)
}

impl Checker<'_> {
    pub(super) fn patroni(&mut self, inv: &Inventory) {
        let p = &inv.patroni;
        let path = |k: &'static str| [Seg::Key("patroni"), Seg::Key(k)];
        let defaults = inv.platform.default_patroni_timings();
        let min = inv.platform.min_patroni_timings();
        let mut any_zero = false;
        for (key, v, what) in [
            (
                "ttl",
                p.ttl,
                "how long the leader key lives without renewal",
            ),
            ("loop_wait", p.loop_wait, "the pause between two HA cycles"),
            (
                "retry_timeout",
                p.retry_timeout,
                "the time allowed for etcd and PostgreSQL operations",
            ),
        ] {
            if v == 0 {
                any_zero = true;
                self.push(
                    Problem::new(format!("`patroni.{key}` is 0 seconds; it is {what}"))
                        .label(self.exact(&path(key)), "must be at least 1")
                        .help(format!(
                            "set `patroni.{key}` to at least 1 (pgdeploy's default on {} is {})",
                            inv.platform,
                            match key {
                                "ttl" => defaults.ttl,
                                "loop_wait" => defaults.loop_wait,
                                _ => defaults.retry_timeout,
                            }
                        )),
                );
            }
        }
        if !any_zero {
            for (key, v, least) in [
                ("ttl", p.ttl, min.ttl),
                ("loop_wait", p.loop_wait, min.loop_wait),
                ("retry_timeout", p.retry_timeout, min.retry_timeout),
            ] {
                if v < least {
                    any_zero = true;
                    self.push(
                        Problem::new(format!(
                            "`patroni.{key}` is {v} s, below the {least} s that Patroni {} on \
                             {} accepts: it would silently run with {least} s instead",
                            inv.platform.patroni_major(),
                            inv.platform.describe(),
                        ))
                        .label(self.exact(&path(key)), format!("at least {least}"))
                        .help(format!(
                            "set `patroni.{key}: {least}` or more (pgdeploy's default on {} is \
                             {}), so that the timings in effect are the ones written here",
                            inv.platform,
                            match key {
                                "ttl" => defaults.ttl,
                                "loop_wait" => defaults.loop_wait,
                                _ => defaults.retry_timeout,
                            }
                        )),
                    );
                }
            }
        }
        if !any_zero && !patroni_timing_ok(p.ttl, p.loop_wait, p.retry_timeout) {
            let need = u64::from(p.loop_wait) + 2 * u64::from(p.retry_timeout);
            let mut problem = Problem::new(format!(
                "`patroni.ttl` ({}) is shorter than loop_wait + 2 × retry_timeout ({} + 2 × {} = \
                 {need})",
                p.ttl, p.loop_wait, p.retry_timeout
            ));
            problem = problem
                .label(self.exact(&path("ttl")), format!("ttl {}", p.ttl))
                .label(self.exact(&path("loop_wait")), "loop_wait")
                .label(self.exact(&path("retry_timeout")), "retry_timeout");
            if problem.labels.is_empty() {
                problem = problem.label(self.near(&path("ttl")), "patroni timings");
            }
            self.push(problem.help(format!(
                "a leader that hits one slow etcd call must still renew its key before it expires, \
                 or Patroni demotes a healthy primary: raise ttl to at least {need}, or lower \
                 loop_wait or retry_timeout"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_rule() {
        assert!(patroni_timing_ok(10, 2, 3));
        assert!(patroni_timing_ok(30, 10, 10));
        assert!(patroni_timing_ok(8, 2, 3));
        assert!(!patroni_timing_ok(7, 2, 3));
        assert!(!patroni_timing_ok(10, 5, 3));
        assert!(patroni_timing_ok(u32::MAX, u32::MAX, 0));
        assert!(!patroni_timing_ok(u32::MAX, u32::MAX, u32::MAX));
    }
}
