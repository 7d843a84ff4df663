//! The raw floor of an etcd lock for `benchmarks/workloads.py`: `ops` rounds of the two
//! transactions a lock needs (put-if-absent on a lease, delete-if-ours), on one connection
//! with one lease granted up front, through the crate's own etcd client (`tooz::clients::etcd`,
//! the one the driver uses) without the driver around it. Prints `{"ops", "seconds",
//! "samples_us"}` as JSON.
//!
//!     etcd3_floor etcd3+http://127.0.0.1:2379 1000

use std::time::Instant;

use tooz::clients::etcd::messages::{Compare, CompareResult, RequestOp, TxnRequest};
use tooz::clients::etcd::Client;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args.get(1).expect("usage: etcd3_floor URL OPS");
    let ops: usize = args.get(2).and_then(|o| o.parse().ok()).unwrap_or(1000);
    let endpoint = url.replacen("etcd3+", "", 1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(endpoint).expect("bad URL").tcp_nodelay(true).connect_lazy();
        let c = Client::connect(channel, false, None).await.expect("cannot connect");
        let lease = c.lease_grant(30).await.expect("no lease").id;
        let key = format!("bench-floor-{}", std::process::id()).into_bytes();
        let token = b"0123456789abcdef".to_vec();
        let round = || {
            let c = c.clone();
            let (key, token) = (key.clone(), token.clone());
            async move {
                let put = TxnRequest::when([Compare::create_revision(key.clone(), CompareResult::Equal, 0)])
                    .and_then([RequestOp::put(key.clone(), token.clone(), lease)]);
                assert!(c.txn(put).await.unwrap().succeeded);
                let del = TxnRequest::when([Compare::value(key.clone(), CompareResult::Equal, token)]).and_then([RequestOp::delete(key)]);
                assert!(c.txn(del).await.unwrap().succeeded);
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
