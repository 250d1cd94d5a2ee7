//! Figures for the lab (run as root): base image build time, `lab up` of the 9-host production
//! topology with a cached base image until every host answers SSH, `lab down` time, and a check
//! that `lab down` leaves nothing behind.
//!
//! Usage: lab-bench [--runs N] [--skip-base-build]

use pgdeploy::lab::{self, Lab, LabOptions, Topology};
use pgdeploy::platform::Platform;
use std::time::{Duration, Instant};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn summary(name: &str, v: &mut [Duration]) {
    v.sort();
    if v.is_empty() {
        return;
    }
    println!(
        "{name:<44} min {:>8}  median {:>8}  max {:>8}  (n={})",
        secs(v[0]),
        secs(v[v.len() / 2]),
        secs(v[v.len() - 1]),
        v.len()
    );
}

#[tokio::main]
async fn main() -> miette::Result<()> {
    let mut runs = 3usize;
    let mut base_build = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| miette::miette!("--runs needs a number"))?
            }
            "--skip-base-build" => base_build = false,
            other => {
                return Err(miette::miette!(
                    "unknown argument {other}; usage: lab-bench [--runs N] [--skip-base-build]"
                ))
            }
        }
    }
    lab::preflight_tools()?;
    if Lab::open().is_ok() {
        return Err(miette::miette!(
            "a lab is up; run `pgdeploy lab down` before benchmarking"
        ));
    }
    println!(
        "lab-bench: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    if base_build {
        // a separate cache directory, so the real cache (maybe in use) stays untouched
        let cache = tempfile::Builder::new()
            .prefix("bench-")
            .tempdir_in(
                std::fs::create_dir_all(lab::CACHE_DIR)
                    .map(|_| lab::CACHE_DIR)
                    .map_err(|e| miette::miette!("cannot create {}: {e}", lab::CACHE_DIR))?,
            )
            .map_err(|e| miette::miette!("cannot create a temporary cache: {e}"))?;
        let img = lab::ensure_base(cache.path(), Platform::default()).await?;
        println!(
            "{:<44} {}  ({} packages on minbase, {})",
            "base image build (debootstrap, uncached)",
            secs(img.build_time),
            lab::PACKAGES.len(),
            Platform::default().codename()
        );
    }
    let img = lab::ensure_base(std::path::Path::new(lab::CACHE_DIR), Platform::default()).await?;
    if img.built {
        println!("(built the cached base image in {})", secs(img.build_time));
    }

    let dir = tempfile::tempdir().map_err(|e| miette::miette!("tempdir: {e}"))?;
    let mut ups = Vec::new();
    let mut boots = Vec::new();
    let mut downs = Vec::new();
    let mut clean = true;
    for i in 0..runs {
        let mut opts = LabOptions::new(Topology::Production, dir.path().join("lab"));
        opts.down_on_drop = true;
        let (lab, rep) = Lab::up_with_report(opts).await?;
        let n = lab.hosts().len();
        let ok = lab
            .status()
            .await
            .iter()
            .filter(|s| s.running && s.ssh)
            .count();
        let t = Instant::now();
        let down = lab.down().await?;
        let dt = t.elapsed();
        let left = lab::leftovers();
        println!(
            "run {}: up {} (boot {}), {ok}/{n} hosts answer SSH; down {} (killed {}, unmounted {}); leftovers: {}",
            i + 1,
            secs(rep.total),
            secs(rep.boot),
            secs(dt),
            down.killed.len(),
            down.unmounted.len(),
            if left.is_empty() { "none".to_string() } else { left.join(", ") }
        );
        clean &= left.is_empty() && ok == n;
        ups.push(rep.total);
        boots.push(rep.boot);
        downs.push(dt);
    }
    summary("lab up, 9 hosts, cached base, until SSH", &mut ups);
    summary("  of which boot (nspawn start -> all SSH)", &mut boots);
    summary("lab down", &mut downs);
    println!(
        "lab down leaves nothing: {}",
        if clean { "yes" } else { "NO" }
    );
    if clean {
        Ok(())
    } else {
        Err(miette::miette!(
            "lab down left something behind (see above)"
        ))
    }
}
