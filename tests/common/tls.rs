//! TLS fixtures shared by the tests and benches/sni.rs (included there by path): a
//! self-signed certificate made by the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A self-signed P-256 certificate for `cn` and its key, in `dir`: (certificate, key).
pub fn self_signed(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian: openssl) is needed");
    assert!(ok.success(), "openssl req failed for {cn}");
    (cert, key)
}
