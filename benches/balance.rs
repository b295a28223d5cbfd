//! Selection micro-benchmarks: one pick per iteration for round robin and least_conn with 8,
//! 64 and 512 backends, ring_hash and Maglev lookups, and the table builds.
//!
//!     cargo bench --bench balance

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringlb::backend::{Backend, BackendState};
use ringlb::balance::{Balancer, LeastConn, Maglev, Pick, RingHash, RoundRobin, key_hash};
use std::hint::black_box;
use std::sync::Arc;

fn backends(n: usize) -> (Vec<Arc<Backend>>, Vec<u32>) {
    let b: Vec<Arc<Backend>> = (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:80", i / 62500, (i / 250) % 250, i % 250 + 1)
                .parse()
                .unwrap();
            Arc::new(Backend::new(
                "bench",
                addr,
                1 + (i % 3) as u32,
                BackendState::Up,
            ))
        })
        .collect();
    let members = (0..n as u32).collect();
    (b, members)
}

fn picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for n in [8usize, 64, 512] {
        let (b, m) = backends(n);
        for (i, x) in b.iter().enumerate() {
            x.stats
                .active
                .store((i * 7 % 13) as i64, std::sync::atomic::Ordering::Relaxed);
        }
        let rr = RoundRobin::new(&b, &m);
        let lc = LeastConn::new(&b, &m);
        let ring = RingHash::new(&b, &m, ringlb::config::DEFAULT_RING_POINTS, None);
        let maglev = Maglev::new(&b, &m, 65537, None);
        let mut k = 0u64;
        let mut next_key = move || {
            k = k.wrapping_add(1);
            key_hash(std::net::Ipv4Addr::from(k as u32).into(), None)
        };
        g.bench_with_input(BenchmarkId::new("round_robin", n), &n, |bench, _| {
            bench.iter(|| {
                rr.pick(
                    black_box(&b),
                    &Pick {
                        key: 0,
                        rand: 0,
                        tried: &[],
                        backup: false,
                    },
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("least_conn", n), &n, |bench, _| {
            let mut r = 0u64;
            bench.iter(|| {
                r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
                lc.pick(
                    black_box(&b),
                    &Pick {
                        key: 0,
                        rand: r,
                        tried: &[],
                        backup: false,
                    },
                )
            })
        });
        let keys: Vec<u64> = (0..4096).map(|_| next_key()).collect();
        g.bench_with_input(BenchmarkId::new("ring_hash", n), &n, |bench, _| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) & 4095;
                ring.pick(
                    black_box(&b),
                    &Pick {
                        key: keys[i],
                        rand: 0,
                        tried: &[],
                        backup: false,
                    },
                )
            })
        });
        g.bench_with_input(BenchmarkId::new("maglev", n), &n, |bench, _| {
            let mut i = 0;
            bench.iter(|| {
                i = (i + 1) & 4095;
                maglev.pick(
                    black_box(&b),
                    &Pick {
                        key: keys[i],
                        rand: 0,
                        tried: &[],
                        backup: false,
                    },
                )
            })
        });
    }
    g.finish();
}

fn builds(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(10);
    for n in [8usize, 64, 512] {
        let (b, m) = backends(n);
        g.bench_with_input(BenchmarkId::new("ring_hash", n), &n, |bench, _| {
            bench.iter(|| {
                RingHash::new(black_box(&b), &m, ringlb::config::DEFAULT_RING_POINTS, None)
            })
        });
        g.bench_with_input(BenchmarkId::new("maglev_65537", n), &n, |bench, _| {
            bench.iter(|| Maglev::new(black_box(&b), &m, 65537, None))
        });
    }
    g.finish();
}

criterion_group!(benches, picks, builds);
criterion_main!(benches);
