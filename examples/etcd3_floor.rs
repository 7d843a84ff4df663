//! The raw floor of an etcd lock for `benchmarks/workloads.py`: `ops` rounds of the two
//! transactions a lock needs (put-if-absent on a lease, delete-if-ours), on one connection
//! with one lease granted up front. Prints `{"ops", "seconds", "samples_us"}` as JSON.
//!
//!     etcd3_floor etcd3+http://127.0.0.1:2379 1000

use std::time::Instant;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: etcd3_floor URL OPS");
    let ops: usize = args.get(2).and_then(|o| o.parse().ok()).unwrap_or(1000);
    let endpoint = url.replacen("etcd3+", "", 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let mut c = Client::connect([endpoint], None).await.expect("cannot connect");
        let lease = c.lease_grant(30, None).await.expect("no lease").id();
        let key = format!("bench-floor-{}", std::process::id()).into_bytes();
        let token = b"0123456789abcdef".to_vec();
        let round = || {
            let mut c = c.clone();
            let (key, token) = (key.clone(), token.clone());
            async move {
                let put = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), token.clone(), Some(PutOptions::new().with_lease(lease)))]);
                assert!(c.txn(put).await.unwrap().succeeded());
                let del = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, token)])
                    .and_then([TxnOp::delete(key, None)]);
                assert!(c.txn(del).await.unwrap().succeeded());
            }
        };
        for _ in 0..ops.min(200) {
            round().await;
        }
        let mut samples = Vec::with_capacity(ops);
        let began = Instant::now();
        for _ in 0..ops {
            let t = Instant::now();
            round().await;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let seconds = began.elapsed().as_secs_f64();
        let list: Vec<String> = samples.iter().map(|s| format!("{s:.2}")).collect();
        println!("{{\"ops\": {ops}, \"seconds\": {seconds}, \"samples_us\": [{}]}}", list.join(", "));
        c.lease_revoke(lease).await.ok();
    });
}
