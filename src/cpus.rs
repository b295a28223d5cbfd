//! How many CPUs this process may really use: its affinity mask, capped by its cgroup's CPU
//! quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), as Go's
//! GOMAXPROCS and the JVM compute it. `workers = 0` starts that many workers.
//!
//! Why: a container with `limits.cpu: 2` on a 64-core node sees 64 CPUs in its affinity mask;
//! one worker per CPU would pre-fault 64 buffer rings (16 MiB each) into a 512 MiB limit, and
//! 62 of the workers could never run at once anyway.
//!
//! Owns: reading /proc/self/cgroup, /proc/self/mountinfo and the quota files. Must not
//! touch: anything else; a file it cannot read means "no quota", never an error.

use std::path::{Path, PathBuf};

/// How many workers `workers = configured` asks for (0 = one per CPU this process may use: its affinity
/// mask, capped by its cgroup's CPU quota; see [`usable`]). Worked out and logged
/// once: `workers` is read only at start, so every later snapshot must agree with it.
pub fn worker_count(configured: u32) -> usize {
    if configured > 0 {
        return configured as usize;
    }
    static AUTO: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AUTO.get_or_init(auto_workers)
}

fn auto_workers() -> usize {
    let affinity = crate::sys::allowed_cpus().len();
    let quota = current_quota();
    let n = usable(affinity, quota);
    match quota {
        Some(q) => tracing::info!(
            workers = n,
            cpus = affinity,
            cpu_quota = format!("{}/{}", q.quota, q.period),
            "workers = 0: one per CPU, capped by the cgroup CPU quota"
        ),
        None => tracing::info!(workers = n, cpus = affinity, "workers = 0: one per CPU"),
    }
    n
}

/// A CPU quota: `quota` microseconds of CPU time per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub quota: u64,
    pub period: u64,
}

impl Quota {
    /// Whole CPUs the quota allows, rounded up (1.5 CPUs of time keeps two threads busy
    /// part of the time; rounding down would leave quota unused), at least 1.
    pub fn cpus(self) -> usize {
        (self.quota.div_ceil(self.period.max(1)) as usize).max(1)
    }
}

/// cgroup v2 `cpu.max`: `"max 100000"` (no quota) or `"150000 100000"`. The period may be
/// left out (the kernel's default is 100000 µs). Anything else reads as no quota.
pub fn parse_cpu_max(text: &str) -> Option<Quota> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period = it.next().unwrap_or("100000");
    if it.next().is_some() || quota == "max" {
        return None;
    }
    positive(quota, period)
}

/// cgroup v1: `cpu.cfs_quota_us` (`-1` = no quota) and `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<Quota> {
    positive(quota.trim(), period.trim())
}

fn positive(quota: &str, period: &str) -> Option<Quota> {
    let (quota, period) = (quota.parse::<u64>().ok()?, period.parse::<u64>().ok()?);
    (quota > 0 && period > 0).then_some(Quota { quota, period })
}

/// The workers `workers = 0` means: one per CPU in the affinity mask, capped by the quota.
pub fn usable(affinity: usize, quota: Option<Quota>) -> usize {
    let affinity = affinity.max(1);
    quota.map_or(affinity, |q| q.cpus().min(affinity))
}

/// The tightest quota on this process's cgroup and its ancestors (a parent's limit binds
/// its children too), or None.
pub fn current_quota() -> Option<Quota> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<Quota> = None;
    for (mount, dir) in quota_dirs(&cgroups, &mounts) {
        // From the process's own cgroup up to the hierarchy's root, not past the mount.
        for d in dir.ancestors().take_while(|d| d.starts_with(&mount)) {
            let found = if let Ok(t) = std::fs::read_to_string(d.join("cpu.max")) {
                parse_cpu_max(&t)
            } else if let (Ok(q), Ok(p)) = (
                std::fs::read_to_string(d.join("cpu.cfs_quota_us")),
                std::fs::read_to_string(d.join("cpu.cfs_period_us")),
            ) {
                parse_cfs(&q, &p)
            } else {
                None
            };
            if let Some(q) = found {
                // Compare quota/period ratios without floating point.
                let tighter = best.is_none_or(|b| {
                    (q.quota as u128) * (b.period as u128) < (b.quota as u128) * (q.period as u128)
                });
                if tighter {
                    best = Some(q);
                }
            }
        }
    }
    best
}

/// Where this process's CPU quota may be, as (mount point, cgroup directory): for the v2
/// hierarchy and for a v1 hierarchy with the `cpu` controller, the mount point joined with
/// the cgroup's path relative to the mount's root.
fn quota_dirs(cgroups: &str, mountinfo: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        for m in mountinfo.lines() {
            // id parent major:minor root mountpoint options... - fstype source superoptions
            let fields: Vec<&str> = m.split_whitespace().collect();
            let Some(dash) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            let (Some(root), Some(point), Some(fstype), Some(sup)) = (
                fields.get(3),
                fields.get(4),
                fields.get(dash + 1),
                fields.get(dash + 3),
            ) else {
                continue;
            };
            let matches = if v2 {
                *fstype == "cgroup2"
            } else {
                *fstype == "cgroup" && sup.split(',').any(|o| o == "cpu")
            };
            if !matches {
                continue;
            }
            // Inside a cgroup namespace the mount's root is the namespace's root, "/".
            let rel = match path.strip_prefix(root) {
                Some(r) if *root == "/" || r.is_empty() || r.starts_with('/') => r,
                _ => path,
            };
            let rel = rel.trim_start_matches('/');
            let entry = (PathBuf::from(point), Path::new(point).join(rel));
            if !out.contains(&entry) {
                out.push(entry);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_up_and_max_means_none() {
        let q = parse_cpu_max("150000 100000\n").unwrap();
        assert_eq!(q.cpus(), 2);
        assert_eq!(usable(64, Some(q)), 2);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(usable(8, parse_cpu_max("max 100000")), 8);
        assert_eq!(usable(8, parse_cpu_max("100000 100000")), 1);
        assert_eq!(usable(8, parse_cpu_max("50000 100000")), 1);
        assert_eq!(usable(8, parse_cpu_max("200001 100000")), 3);
        // More quota than CPUs: the affinity mask is the limit.
        assert_eq!(usable(2, parse_cpu_max("800000 100000")), 2);
        assert_eq!(parse_cpu_max("150000").unwrap().cpus(), 2);
        for bad in [
            "",
            "x 100000",
            "0 100000",
            "100 0",
            "-1 100000",
            "1 2 3",
            "1.5 1",
        ] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
        assert_eq!(usable(0, None), 1);
    }

    #[test]
    fn cfs_quota() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("250000\n", "100000\n").unwrap().cpus(), 3);
        assert_eq!(parse_cfs("garbage", "100000"), None);
    }

    #[test]
    fn finds_the_quota_directories() {
        let cgroups = "12:cpu,cpuacct:/kubepods/pod1/c1\n4:memory:/x\n0::/user.slice/a\n";
        let mounts = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let dirs: Vec<PathBuf> = quota_dirs(cgroups, mounts)
            .into_iter()
            .map(|d| d.1)
            .collect();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1"),
                PathBuf::from("/sys/fs/cgroup/unified/user.slice/a"),
            ]
        );
        // A container with a cgroup namespace: the mount's root is its own cgroup.
        let ns = "0::/\n";
        let m = "40 30 0:40 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            quota_dirs(ns, m),
            vec![(
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/sys/fs/cgroup")
            )]
        );
        // Without a namespace, a bind-mounted subtree: the path is relative to its root.
        let c = "0::/kubepods/pod2\n";
        let m = "40 30 0:40 /kubepods /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(quota_dirs(c, m)[0].1, PathBuf::from("/sys/fs/cgroup/pod2"));
        assert!(quota_dirs("garbage", "garbage").is_empty());
    }
}
