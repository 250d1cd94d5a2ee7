//! Progress display at the CLI edge: indicatif bars on a terminal, plain lines otherwise.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pgdeploy::engine::Observer;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

pub struct Progress {
    bars: Option<MultiProgress>,
    hosts: Mutex<BTreeMap<String, ProgressBar>>,
    phase: Mutex<String>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress {
            bars: if tty && !quiet {
                Some(MultiProgress::new())
            } else {
                None
            },
            hosts: Mutex::new(BTreeMap::new()),
            phase: Mutex::new(String::new()),
        }
    }

    fn clear_bars(&self) {
        if let Ok(mut h) = self.hosts.lock() {
            for (_, b) in std::mem::take(&mut *h) {
                b.finish_and_clear();
            }
        }
    }
}

impl Observer for Progress {
    fn phase_started(&self, phase: &str, _hosts: usize) {
        self.clear_bars();
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
        if self.bars.is_none() {
            eprintln!("phase {phase}: started");
        }
    }
    fn host_status(&self, host: &str, status: &str) {
        let phase = self.phase.lock().map(|p| p.clone()).unwrap_or_default();
        match &self.bars {
            Some(mp) => {
                if let Ok(mut h) = self.hosts.lock() {
                    let bar = h.entry(host.to_string()).or_insert_with(|| {
                        let b = mp.add(ProgressBar::new_spinner());
                        b.set_style(
                            ProgressStyle::with_template("{spinner} {prefix:>12} {wide_msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        b.set_prefix(host.to_string());
                        b.enable_steady_tick(Duration::from_millis(120));
                        b
                    });
                    bar.set_message(format!("{phase}: {status}"));
                }
            }
            None => eprintln!("  {host}: {phase}: {status}"),
        }
    }
    fn phase_finished(&self, phase: &str, changes: usize, elapsed: Duration) {
        self.clear_bars();
        let line = format!(
            "phase {phase}: {changes} change{} ({:.1} s)",
            if changes == 1 { "" } else { "s" },
            elapsed.as_secs_f64()
        );
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
    fn message(&self, text: &str) {
        match &self.bars {
            Some(mp) => {
                let _ = mp.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}
