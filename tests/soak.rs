//! The soak with faults, 60 s of it (the long run is `cargo bench --bench soak`): traffic
//! verified byte for byte through SIGHUPs with new weights, admin churn, a killed backend,
//! two upgrades and a scaler scaling out and in. No checksum mismatch, no failure the
//! faults do not explain, no error from ringlb, no relay repair, no descriptor left behind.

#[path = "../benches/soak/driver.rs"]
mod driver;

use std::time::Duration;

#[test]
fn a_minute_of_mixed_faults_loses_nothing() {
    let o = driver::Opts {
        bin: env!("CARGO_BIN_EXE_ringlb").into(),
        duration: Duration::from_secs(60),
        threads: 2,
        bulk_max: 1 << 20,
        upgrade_every: Duration::from_secs(20),
        kill_every: Duration::from_secs(30),
        sample_every: Duration::from_secs(5),
        verbose: true,
    };
    let r = driver::run(&o);
    let text = format!(
        "{}\nunexplained: {:#?}\nringlb: {:#?}",
        r.markdown(),
        r.unexplained_samples,
        r.ringlb_errors
    );
    eprintln!("{text}");
    assert_eq!(r.mismatches, 0, "{text}");
    assert_eq!(r.failed_unexplained(), 0, "{text}");
    assert!(r.ringlb_errors.is_empty(), "{text}");
    assert_eq!(r.relay_repairs, 0.0, "{text}");
    assert!(
        r.idle_fds.1 <= r.idle_fds.0 + driver::FD_SLACK,
        "descriptors grew from {} to {} idle: {text}",
        r.idle_fds.0,
        r.idle_fds.1
    );
    // The faults happened: a run that injected none proves nothing.
    for f in [
        "serve --upgrade",
        "backend SIGKILL",
        "SIGHUP with new weights",
        "admin delete",
        "scaler launches",
        "scaler removals",
    ] {
        assert!(r.faults.get(f).copied().unwrap_or(0) > 0, "no {f}: {text}");
    }
    assert!(r.connections_ok > 100 && r.bytes_verified > 0, "{text}");
}
