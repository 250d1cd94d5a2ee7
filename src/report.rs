//! Rendering plans for people (text) and programs (JSON). Pure: returns strings.

use crate::engine::change::Change;
use crate::engine::phase::PhasePlan;
use crate::engine::step::Step;
use std::collections::BTreeSet;

/// Totals of a plan.
pub fn totals(plans: &[PhasePlan]) -> (usize, usize) {
    let mut hosts = BTreeSet::new();
    let mut n = 0;
    for p in plans {
        for h in &p.hosts {
            let c = h.changes.iter().filter(|c| !c.is_deferred()).count();
            if c > 0 {
                hosts.insert(h.host.clone());
                n += c;
            }
        }
        // Orchestration steps that change something count too (a plan of steps alone, such
        // as a role's new connection limit, is a plan with changes).
        for st in p.steps.iter().filter(|s| s.step.is_change()) {
            hosts.insert(st.host.clone());
            n += 1;
        }
    }
    (n, hosts.len())
}

/// One phase as text: per host, each change with its diff indented.
pub fn phase_text(p: &PhasePlan) -> String {
    let mut s = String::new();
    let with_changes: Vec<_> = p.hosts.iter().filter(|h| !h.changes.is_empty()).collect();
    if with_changes.is_empty() && p.steps.is_empty() {
        return s;
    }
    s.push_str(&format!("== {} ==\n", p.phase));
    for h in with_changes {
        s.push_str(&format!("  {}:\n", h.host));
        for c in &h.changes {
            s.push_str(&format!("    {}\n", c.summary()));
            if let Change::File { diff, .. } = c {
                for line in diff.lines() {
                    s.push_str(&format!("        {line}\n"));
                }
            }
        }
    }
    if !p.steps.is_empty() {
        s.push_str("  steps, in this order:\n");
        for (i, st) in p.steps.iter().enumerate() {
            s.push_str(&format!(
                "    {:>2}. {}: {}\n",
                i + 1,
                st.host,
                st.step.summary()
            ));
        }
    }
    s
}

/// The whole plan as text with a summary line.
pub fn plan_text(plans: &[PhasePlan]) -> String {
    let mut s = String::new();
    for p in plans {
        s.push_str(&phase_text(p));
    }
    s.push_str(&summary_line(plans));
    s
}

pub fn summary_line(plans: &[PhasePlan]) -> String {
    let (n, hosts) = totals(plans);
    let deferred: usize = plans
        .iter()
        .flat_map(|p| p.hosts.iter())
        .map(|h| h.changes.iter().filter(|c| c.is_deferred()).count())
        .sum::<usize>()
        + plans
            .iter()
            .flat_map(|p| p.steps.iter())
            .filter(|s| matches!(s.step, Step::Deferred { .. } | Step::Note { .. }))
            .count();
    let mut s = if n == 0 {
        "No changes: the hosts match the inventory.".to_string()
    } else {
        format!(
            "{n} change{} on {hosts} host{}.",
            if n == 1 { "" } else { "s" },
            if hosts == 1 { "" } else { "s" }
        )
    };
    if deferred > 0 {
        s.push_str(&format!(
             " {deferred} note{} (marked ? or =: deferred, not applicable on these hosts, or kept as found).",
            if deferred == 1 { "" } else { "s" }
        ));
    }
    s.push('\n');
    s
}

/// The plan as JSON (diffs included, redacted as in text).
pub fn plan_json(plans: &[PhasePlan]) -> String {
    let (n, hosts) = totals(plans);
    let v = serde_json::json!({
        "changes": n,
        "hosts_changed": hosts,
        "phases": plans,
    });
    serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::phase::HostPlan;

    #[test]
    fn summary_counts_hosts_and_changes() {
        let p = PhasePlan {
            steps: Vec::new(),
            phase: "common".into(),
            hosts: vec![
                HostPlan {
                    host: "a".into(),
                    changes: vec![Change::Command {
                        command: "true".into(),
                        reason: "x".into(),
                    }],
                },
                HostPlan {
                    host: "b".into(),
                    changes: vec![Change::Deferred {
                        what: "leader".into(),
                        why: "not bootstrapped".into(),
                    }],
                },
            ],
        };
        let t = plan_text(&[p]);
        assert!(t.contains("1 change on 1 host. 1 note"), "{t}");
        assert!(t.contains("== common =="));
    }

    #[test]
    fn empty_plan_says_so() {
        assert_eq!(
            summary_line(&[]),
            "No changes: the hosts match the inventory.\n"
        );
    }
}
