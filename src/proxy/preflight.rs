//! Preflight: can this process use io_uring at all, and if not, what blocks it.
//!
//! Owns: turning a failed ring setup into a sentence an operator can act on. Containers are
//! the usual cause: containerd and moby took io_uring out of their default seccomp profiles,
//! and some distributions set `kernel.io_uring_disabled`. `ringlb check` runs this before
//! it says a config is valid; a worker that cannot set up its ring gives the same hint.
//! Must not touch: anything but a throwaway ring.

use super::ring::Ring;

/// Sets up a small ring with a buffer ring, as a worker would, and drops it.
pub fn check() -> Result<String, String> {
    match Ring::new(8, 2, 4096, 16) {
        Ok(ring) => Ok(format!(
            "io_uring: usable (kernel {}; capped multishot recvs: {}; incremental buffers: {}; fixed files: {})",
            kernel_release(),
            if ring.recv_capped() {
                "yes"
            } else {
                "no, Linux 6.17+ has them"
            },
            if ring.incremental() {
                "yes"
            } else {
                "no, Linux 6.12+ has them"
            },
            if ring.fixed_files() {
                "yes"
            } else {
                "no, Linux 5.19+ has them"
            }
        )),
        Err(e) => Err(explain(&e)),
    }
}

/// Whether this kernel consumes provided buffers incrementally (and `buf_inc` is not
/// turned off), asked of a throwaway ring: it decides the default relay buffer layout
/// before the workers make theirs.
pub fn incremental_buffers() -> bool {
    Ring::new(8, 2, 4096, 0).is_ok_and(|r| r.incremental())
}

/// What an io_uring setup error means here.
pub fn explain(e: &std::io::Error) -> String {
    let kernel = kernel_release();
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => format!(
            "this kernel ({kernel}) has no io_uring, or it was built without it (CONFIG_IO_URING); ringlb needs Linux 5.19+, 6.1+ advised"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok());
            match disabled {
                Some(2) => "kernel.io_uring_disabled = 2: io_uring is off for every process on this host (sysctl -w kernel.io_uring_disabled=0)".to_string(),
                Some(1) => "kernel.io_uring_disabled = 1: only processes in the group kernel.io_uring_group names (or with CAP_SYS_ADMIN) may use io_uring".to_string(),
                _ if seccomp_filtered() => "a seccomp filter refuses io_uring_setup: container runtimes' default profiles (containerd, moby) block io_uring; run with a profile that allows io_uring_setup, io_uring_enter and io_uring_register (Kubernetes: securityContext.seccompProfile)".to_string(),
                _ => "the kernel refused io_uring_setup (EPERM), and neither kernel.io_uring_disabled nor a seccomp filter explains it: an LSM policy (SELinux, AppArmor) may".to_string(),
            }
        }
        Some(libc::EINVAL) => format!(
            "this kernel ({kernel}) refused the ring's setup or its buffer ring (IORING_REGISTER_PBUF_RING needs Linux 5.19+)"
        ),
        Some(libc::ENOMEM) => {
            "not enough locked memory for the ring (RLIMIT_MEMLOCK, on kernels before 5.12)"
                .to_string()
        }
        _ => format!("{e}"),
    };
    format!("cannot use io_uring: {why} ({e})")
}

/// `uname -r`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether this process runs under a seccomp filter (mode 2 in /proc/self/status).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.split_whitespace().nth(1) == Some("2"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_io_uring_and_errors_read_well() {
        assert!(super::check().is_ok(), "{:?}", super::check());
        let e = super::explain(&std::io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(e.contains("no io_uring") && e.contains("5.19"), "{e}");
        let e = super::explain(&std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.starts_with("cannot use io_uring: "), "{e}");
    }
}
