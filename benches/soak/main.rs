//! The soak with faults, for as long as asked: `cargo bench --bench soak -- --duration 30m`
//! (default 5m). Prints the samples as they come and a Markdown report at the end (the
//! README's table); exits 1 on a checksum mismatch, an unexplained failure, an error line
//! from ringlb, a relay repair, or descriptors that grew. See `driver.rs` for what runs.

mod driver;

use std::time::Duration;

fn main() {
    let mut duration = Duration::from_secs(300);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--duration" => {
                let v = args.next().unwrap_or_default();
                let (n, unit) = v.split_at(v.trim_end_matches(char::is_alphabetic).len());
                let n: u64 = n
                    .parse()
                    .unwrap_or_else(|_| panic!("--duration {v}: e.g. 30m"));
                duration = Duration::from_secs(match unit {
                    "s" | "" => n,
                    "m" => n * 60,
                    "h" => n * 3600,
                    _ => panic!("--duration {v}: s, m or h"),
                });
            }
            "--bench" => {}
            other => panic!("unknown argument {other}: --duration 30m"),
        }
    }
    let o = driver::Opts {
        bin: env!("CARGO_BIN_EXE_ringlb").into(),
        duration,
        threads: 4,
        bulk_max: 8 << 20,
        upgrade_every: Duration::from_secs(180),
        kill_every: Duration::from_secs(60),
        sample_every: Duration::from_secs(60),
        verbose: true,
    };
    eprintln!("soak: {duration:?} against {}", o.bin.display());
    let r = driver::run(&o);
    println!("{}", r.markdown());
    for s in &r.unexplained_samples {
        println!("unexplained: {s}");
    }
    for e in &r.ringlb_errors {
        println!("ringlb: {e}");
    }
    let bad = r.mismatches > 0
        || r.failed_unexplained() > 0
        || !r.ringlb_errors.is_empty()
        || r.relay_repairs > 0.0
        || r.idle_fds.1 > r.idle_fds.0 + driver::FD_SLACK;
    std::process::exit(if bad { 1 } else { 0 });
}
