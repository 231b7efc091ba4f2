//! Storage overhead of the embedded engine: the same code, SQLCipher-keyed vs unkeyed (plain
//! SQLite pages), on a write-heavy and a read-heavy workload, alternating rounds so both see the
//! same machine noise. Prints each round and the median ratio (target ≤ 1.3×).
//!
//! `cargo run --release -p atrest-node --example storage_overhead -- [docs] [rounds] [normal|full]`
//!
//! `normal` (the default, the node's setting) commits without an fsync, so the page crypto is
//! the whole difference; `full` fsyncs every commit, as a database that must survive power loss
//! does.

use std::time::Instant;

use atrest_node::{BatchOp, DataKeys, Durability, Encryption, Engine, KeyBytes, SqlCipherEngine};

fn body(i: usize) -> String {
    format!(
        "{{\"n\":{i},\"customer\":\"customer-{:06}\",\"status\":\"shipped\",\"items\":[{{\"sku\":\"SKU-{:05}\",\"qty\":{}}}],\"note\":\"{}\"}}",
        i % 9973,
        i % 50000,
        i % 7 + 1,
        "x".repeat(120)
    )
}

/// Write-heavy: `docs` puts in batches of 100 (one transaction each), then 20 % overwritten.
/// Read-heavy: `docs` point reads in a scrambled order, plus a listing every 100 reads.
fn run(encryption: Encryption, durability: Durability, docs: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = SqlCipherEngine::new(dir.path(), encryption, durability);
    engine.open(&DataKeys::single(KeyBytes::random().unwrap())).unwrap();
    let start = Instant::now();
    for chunk in (0..docs).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<BatchOp> = chunk
            .iter()
            .map(|i| BatchOp::Put { collection: "orders".into(), id: format!("order-{i:08}"), body: body(*i) })
            .collect();
        engine.batch(&ops).unwrap();
    }
    for i in (0..docs).step_by(5) {
        engine.put("orders", &format!("order-{i:08}"), &body(i + 1)).unwrap();
    }
    let write = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut found = 0usize;
    for k in 0..docs {
        let i = (k * 7919) % docs;
        found += engine.get("orders", &format!("order-{i:08}")).unwrap().is_some() as usize;
        if k % 100 == 0 {
            found += engine.list("orders", &format!("order-{:06}", i / 100), None, 20).unwrap().documents.len();
        }
    }
    let read = start.elapsed().as_secs_f64();
    assert!(found >= docs);
    engine.close().unwrap();
    (write, read)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let docs: usize = args.next().map(|a| a.parse().expect("docs: a number")).unwrap_or(50_000);
    let rounds: usize = args.next().map(|a| a.parse().expect("rounds: a number")).unwrap_or(5);
    let durability = match args.next().as_deref() {
        None | Some("normal") => Durability::Normal,
        Some("full") => Durability::Full,
        Some(other) => panic!("durability: normal or full, not {other}"),
    };
    println!(
        "embedded engine storage overhead: {docs} documents (~230 B), {rounds} alternating rounds, synchronous = {durability:?}"
    );
    let (mut w_ratio, mut r_ratio) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let (pw, pr) = run(Encryption::Unencrypted, durability, docs);
        let (ew, er) = run(Encryption::Encrypted, durability, docs);
        println!(
            "round {round}: write-heavy plain {pw:.3}s sqlcipher {ew:.3}s ({:.2}x); read-heavy plain {pr:.3}s sqlcipher {er:.3}s ({:.2}x)",
            ew / pw,
            er / pr
        );
        w_ratio.push(ew / pw);
        r_ratio.push(er / pr);
    }
    let (w, r) = (median(w_ratio), median(r_ratio));
    let verdict = |x: f64| if x <= 1.3 { "MET" } else { "NOT MET" };
    println!(
        "median ratio write-heavy: {w:.2}x ({}), read-heavy: {r:.2}x ({}) (target <= 1.3x)",
        verdict(w),
        verdict(r)
    );
}
