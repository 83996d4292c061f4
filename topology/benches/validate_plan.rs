//! Validate + plan a generated topology with 1,000 hosts and 10,000 apps.
//! Target (issue 2): under 1 s on the 2-core build machine.
//!
//!     cargo bench -p topology --bench validate_plan
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use topology::generate::{GenSpec, generate};

fn bench(c: &mut Criterion) {
    let spec = GenSpec {
        hosts: 1000,
        apps: 10_000,
        tiers: 4,
        seed: 42,
    };
    let text = topology::render::to_toml(&generate(spec));
    let topo = topology::check_str(&text)
        .topology
        .expect("generated topology is valid");
    eprintln!(
        "input: {} bytes, {} hosts, {} apps, {} VMs, {} volumes",
        text.len(),
        topo.hosts.len(),
        topo.apps.len(),
        topo.vm_count(),
        topo.volume_count()
    );
    let mut g = c.benchmark_group("1k_hosts_10k_apps");
    g.sample_size(10);
    // `check_str` parses, validates and (for the capacity check) plans: this is the
    // whole of `metrodr topology plan` except printing.
    g.bench_function("validate_and_plan", |b| {
        b.iter(|| topology::check_str(black_box(&text)))
    });
    g.bench_function("plan_only", |b| {
        b.iter(|| topology::plan::plan(black_box(&topo)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
