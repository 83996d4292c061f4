#![allow(clippy::unwrap_used)]
use std::time::Instant;
fn main() {
    let spec = topology::generate::GenSpec {
        hosts: 1000,
        apps: 10_000,
        tiers: 4,
        seed: 42,
    };
    let text = topology::render::to_toml(&topology::generate::generate(spec));
    for _ in 0..3 {
        let t0 = Instant::now();
        let (de, errs) = toml::de::DeTable::parse_recoverable(&text);
        let t1 = Instant::now();
        drop((de, errs));
        let (raw, mut diags) = topology::parse::parse(&text);
        let t2 = Instant::now();
        let (topo, _) = topology::validate::validate(raw, &mut diags).unwrap();
        let t3 = Instant::now();
        let _p = topology::plan::plan(&topo);
        let t4 = Instant::now();
        println!(
            "toml {:?} parse {:?} validate {:?} plan {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3
        );
    }
}
