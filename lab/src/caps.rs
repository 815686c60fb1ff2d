//! The Linux capabilities the lab's ztunnel processes run with: exactly the set ztunnel's
//! DaemonSet grants (`capabilities: drop: [ALL], add: [...]`, as root), so that the e2e suite
//! proves the deployment's list is enough. The lab itself runs as root with every capability;
//! each ztunnel child drops the rest from its bounding set before `exec`, and a root process
//! without file capabilities then gets exactly its bounding set as permitted and effective
//! capabilities — what a container runtime gives a container whose bounding set is that list.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// What ztunnel's DaemonSet (`deploy/base/ztunnel.yaml`, nft capture) adds after dropping
/// ALL, in Kubernetes' spelling (no `CAP_`): NET_ADMIN for nft rules, policy routes,
/// transparent and marked sockets; SYS_ADMIN for entering pods' netns, bpf() and bpffs. Not
/// NET_RAW, which Istio's ztunnel adds. ARCHITECTURE.md ("Capabilities") has the evidence;
/// e2e `capabilities.rs` checks the DaemonSet says the same.
pub const ZTUNNEL_CAPS: &[&str] = &["NET_ADMIN", "SYS_ADMIN"];

/// What eBPF capture needs besides [`ZTUNNEL_CAPS`] (the `ebpf` overlay adds it): the answer
/// to a steered DNS query goes out of a transparent socket bound to the address the app
/// asked, the nameserver's port 53, a privileged port in the pod's netns (nft's redirect
/// needs no such bind: conntrack rewrites the reply).
pub const EBPF_EXTRA_CAPS: &[&str] = &["NET_BIND_SERVICE"];

/// Overrides the set of the lab's ztunnels: a comma-separated list of names
/// (`NET_ADMIN,SYS_ADMIN`, any case, `CAP_` prefix allowed; empty: no capability at all), so a
/// test can try fewer.
pub const ZTUNNEL_CAPS_ENV: &str = "AMESH_LAB_ZTUNNEL_CAPS";

/// The names the DaemonSet grants ztunnel for `capture_mode` (ztunnel's `CAPTURE_MODE`; empty
/// or `auto` may pick eBPF, so it gets eBPF's set; `nft`, or anything else such as istio-cni
/// capturing for ztunnel, the base's).
pub fn granted(capture_mode: &str) -> Vec<&'static str> {
    let mut names = ZTUNNEL_CAPS.to_vec();
    if matches!(capture_mode, "" | "auto" | "ebpf") {
        names.extend_from_slice(EBPF_EXTRA_CAPS);
    }
    names
}

/// The kernel's capability names by number (`include/uapi/linux/capability.h`, up to 6.x).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability name that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: unknown capability {name:?} (expected names such as NET_ADMIN, SYS_ADMIN, NET_BIND_SERVICE)")]
pub struct CapsError {
    /// Where the name came from (the variable, or the file and field).
    pub source_name: String,
    pub name: String,
}

/// A set of capabilities, as the kernel's bit mask (bit n = capability n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    /// The set named by `names` (Kubernetes' spelling, any case, `CAP_` prefix allowed);
    /// `source` names where they came from, for the error.
    pub fn from_names<S: AsRef<str>>(names: &[S], source: &str) -> Result<CapSet, CapsError> {
        let mut bits = 0u64;
        for name in names {
            let raw = name.as_ref().trim();
            let upper = raw.to_ascii_uppercase();
            let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
            let n = NAMES
                .iter()
                .position(|known| *known == bare)
                .ok_or_else(|| CapsError {
                    source_name: source.to_string(),
                    name: raw.to_string(),
                })?;
            bits |= 1 << n;
        }
        Ok(CapSet(bits))
    }

    /// The set a `/proc/<pid>/status` line's hex mask (`CapEff:\t0000000000003000`) holds.
    pub fn from_status_hex(hex: &str) -> Option<CapSet> {
        u64::from_str_radix(hex.trim(), 16).ok().map(CapSet)
    }

    /// The names in the set, by number; bits the table does not know as `CAP_<n>`.
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|n| self.0 & (1 << n) != 0)
            .map(|n| {
                NAMES
                    .get(n)
                    .map_or_else(|| format!("CAP_{n}"), |s| s.to_string())
            })
            .collect()
    }

    /// Whether capability number `n` is in the set.
    fn has(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }
}

/// The set the lab's ztunnels run with: [`ZTUNNEL_CAPS_ENV`] if set, else what the DaemonSet
/// grants for `capture_mode` ([`granted`]).
pub fn ztunnel_caps(capture_mode: &str) -> Result<CapSet, CapsError> {
    match std::env::var(ZTUNNEL_CAPS_ENV) {
        Ok(list) => {
            let names: Vec<&str> = list.split(',').filter(|s| !s.trim().is_empty()).collect();
            CapSet::from_names(&names, ZTUNNEL_CAPS_ENV)
        }
        Err(_) => CapSet::from_names(&granted(capture_mode), "lab::caps::granted"),
    }
}

/// The capability mask of `pid`'s `field` (`CapEff`, `CapBnd`, ...) from `/proc/<pid>/status`.
pub fn of_process(pid: i32, field: &str) -> Option<CapSet> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let head = format!("{field}:");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(CapSet::from_status_hex)
}

/// Whether `pid` runs with `no_new_privs` (`NoNewPrivs:` of `/proc/<pid>/status`).
pub fn no_new_privs(pid: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("NoNewPrivs:"))?;
    Some(value.trim() == "1")
}

/// `capget`/`capset`'s header (`struct __user_cap_header_struct`).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One of `capget`/`capset`'s two data words (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two data words.
const CAP_VERSION_3: u32 = 0x2008_0522;

/// Makes `cmd`'s process keep only `set`: in the child, before `exec`, every other
/// capability leaves the bounding set, the inheritable set is emptied, ambient capabilities
/// are cleared and `no_new_privs` is set (the DaemonSet's `allowPrivilegeEscalation: false`:
/// what ztunnel runs, such as `nft`, never gets more than it holds). The caller's own capabilities are untouched (the child's other
/// pre-exec steps, such as entering a netns, still have them), and the program, run as root,
/// starts with exactly `set` effective.
pub fn restrict(cmd: &mut Command, set: CapSet) {
    // SAFETY: the hook runs in the forked child before exec and only makes raw system calls
    // (prctl, capget, capset) on stack memory, which are async-signal-safe; it touches no
    // allocator or lock.
    unsafe {
        cmd.pre_exec(move || {
            // The bounding set first: numbers past the kernel's last capability are EINVAL,
            // which ends the walk.
            for n in 0..64u32 {
                if set.has(n) {
                    continue;
                }
                if libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        break;
                    }
                    return Err(e);
                }
            }
            // Root's exec grants the inheritable set too, and ambient ones are kept: neither
            // may carry a capability past the bounding set.
            let mut header = CapHeader {
                version: CAP_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for word in &mut data {
                word.inheritable = 0;
            }
            if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_spelling_and_unknown_ones_are_named() {
        let set = CapSet::from_names(&["net_admin", "CAP_SYS_ADMIN", " NET_RAW "], "test").unwrap();
        assert_eq!(set, CapSet((1 << 12) | (1 << 21) | (1 << 13)));
        assert_eq!(set.names(), ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]);
        let err = CapSet::from_names(&["NET_ADMIN", "NET_ADMN"], "AMESH_LAB_ZTUNNEL_CAPS")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AMESH_LAB_ZTUNNEL_CAPS") && err.contains("NET_ADMN"),
            "{err}"
        );
    }

    #[test]
    fn ebpf_capture_is_granted_the_dns_bind_and_nft_is_not() {
        assert_eq!(granted("nft"), ["NET_ADMIN", "SYS_ADMIN"]);
        for mode in ["", "auto", "ebpf"] {
            assert_eq!(
                granted(mode),
                ["NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"]
            );
        }
    }

    /// A real child started through [`restrict`] has exactly the set, effective and bounding
    /// (this process runs as root with every capability, as the lab does).
    #[test]
    fn a_restricted_child_runs_with_exactly_the_set() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let set = CapSet::from_names(&["NET_ADMIN", "NET_RAW"], "test").unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        restrict(&mut cmd, set);
        let mut child = cmd.spawn().expect("spawn sleep");
        let pid = child.id() as i32;
        // `sleep` has exec'd once /proc shows its name; before that the fork is still us.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n"
        {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let eff = of_process(pid, "CapEff");
        let bnd = of_process(pid, "CapBnd");
        let inh = of_process(pid, "CapInh");
        let amb = of_process(pid, "CapAmb");
        let nnp = no_new_privs(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(eff, Some(set), "effective: {:?}", eff.map(CapSet::names));
        assert_eq!(bnd, Some(set), "bounding: {:?}", bnd.map(CapSet::names));
        assert_eq!(inh, Some(CapSet(0)));
        assert_eq!(amb, Some(CapSet(0)));
        assert_eq!(nnp, Some(true));
    }
}
