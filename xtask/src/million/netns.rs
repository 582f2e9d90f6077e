//! `cargo xtask million --netns`: the run in a network namespace of its
//! own, whose established hash is sized for the run.
//!
//! The established hash (every TCP socket keyed by its four-tuple, looked
//! up for each segment) is sized once at boot for the host; a million
//! loopback connections are two million sockets in it. A *new* network
//! namespace can have a table of its own: the kernel sizes it from the
//! creating namespace's `net.ipv4.tcp_child_ehash_entries` at the moment
//! the namespace is created (Linux 6.1+), and never reads it again. So:
//!
//! 1. write the host's `tcp_child_ehash_entries` (keeping the file open),
//! 2. `unshare(CLONE_NEWNET)`: this process, and every process it starts
//!    from now on, is in the new namespace,
//! 3. write the old value back through the file still open on the host's
//!    namespace (a path under `/proc/sys/net` now names the new one's),
//! 4. bring `lo` up (a new namespace has only `lo`, and down),
//! 5. give the namespace the host's per-namespace sysctls (they start at
//!    the kernel's defaults), so the run differs from one on the host by
//!    the hash alone.
//!
//! Nothing tears it down: the namespace goes when its last process exits.
//! The run's before-and-after readings of `/proc/net/sockstat` and
//! `/proc/net/netstat` are this namespace's own (sockets, TIME_WAIT,
//! handshake counters), taken inside it from the baseline on, so "back to
//! baseline" still compares like with like; descriptors and memory
//! (`/proc/sys/fs/file-nr`, `/proc/meminfo`) are host-wide as before, and
//! the namespace's table is allocated before the baseline is taken.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::run::TaskError;

/// Where the size of a new namespace's table is set (in its parent).
const CHILD_EHASH: &str = "/proc/sys/net/ipv4/tcp_child_ehash_entries";
/// The table of the namespace the reader is in (negative: the host's,
/// shared).
const EHASH: &str = "/proc/sys/net/ipv4/tcp_ehash_entries";
/// The kernel's upper bound for `tcp_child_ehash_entries` (16 Mi).
const MAX_EHASH: u64 = 1 << 24;

/// Per-namespace sysctls copied from the host into the new namespace:
/// the ones the doctor checks, and the rest of what shapes a ramp and its
/// tear-down. Host-wide ones (`fs.*`, `net.ipv4.tcp_mem`, `net.core.*`
/// other than `somaxconn`) need no copy.
pub(crate) const PER_NAMESPACE: [&str; 9] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Host-wide sysctls that a network namespace cannot see (no file under
/// its `/proc/sys/net`): read on the host before entering one, for the
/// doctor.
const HOST_ONLY: [&str; 1] = ["net.ipv4.tcp_mem"];

/// What `--netns` set up, as the report records it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct NetworkNamespace {
    /// `net.ipv4.tcp_ehash_entries` read inside the new namespace.
    pub(super) ehash_entries: u64,
    /// The host's table, for comparison.
    pub(super) host_ehash_entries: u64,
    /// The per-namespace sysctls written in the namespace: `key=value`.
    pub(super) sysctls: Vec<String>,
}

/// Values read on the host before this process left its namespace.
static HOST_VALUES: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();

/// This process created the namespace it is in (the doctor says so).
pub(crate) fn entered() -> bool {
    HOST_VALUES.get().is_some()
}

/// A host-wide sysctl this namespace cannot see, as read on the host
/// before entering it.
pub(crate) fn host_value(key: &str) -> Option<String> {
    HOST_VALUES
        .get()?
        .iter()
        .find_map(|(k, v)| (*k == key).then(|| v.clone()))
}

/// The hash size `--netns` asks for: a bucket per socket (two a
/// connection, both ends on this host), a power of two, at most the
/// kernel's bound, and never smaller than the host's table (`host`).
pub(super) fn ehash_entries_for(connections: usize, host: u64) -> u64 {
    (2 * connections as u64)
        .next_power_of_two()
        .max(host.next_power_of_two())
        .clamp(1, MAX_EHASH)
}

/// Moves this process into a new network namespace with a hash of
/// [`ehash_entries_for`] `connections` buckets. Call before any thread
/// is started: `unshare` moves only the calling thread, and every thread
/// and process started afterwards inherits its namespace.
pub(super) fn enter(connections: usize) -> Result<NetworkNamespace, TaskError> {
    check_host()?;
    if threads() != Some(1) {
        return Err(TaskError::Failed(
            "--netns: xtask started a thread before entering the namespace; that \
             thread would stay in the host's"
                .to_string(),
        ));
    }
    let host_ehash = read_number(EHASH)?.unsigned_abs();
    let wanted = ehash_entries_for(connections, host_ehash);
    let copied: Vec<(&str, String)> = PER_NAMESPACE
        .iter()
        .filter_map(|&key| Some((key, fs::read_to_string(sysctl_path(key)).ok()?)))
        .collect();
    let host_only = HOST_ONLY
        .iter()
        .filter_map(|&key| Some((key, fs::read_to_string(sysctl_path(key)).ok()?)))
        .collect();

    let mut child_ehash = OpenOptions::new()
        .read(true)
        .write(true)
        .open(CHILD_EHASH)
        .map_err(|e| TaskError::Failed(format!("opening {CHILD_EHASH}: {e}")))?;
    let before = fs::read_to_string(CHILD_EHASH)
        .map_err(|e| TaskError::Failed(format!("reading {CHILD_EHASH}: {e}")))?;
    write_at_start(&mut child_ehash, &wanted.to_string())
        .map_err(|e| TaskError::Failed(format!("writing {CHILD_EHASH} = {wanted}: {e}")))?;
    let unshared = unshare_network();
    // At once, whatever happened: only namespaces created meanwhile read it.
    let restored = write_at_start(&mut child_ehash, before.trim());
    unshared.map_err(|e| TaskError::Failed(format!("unshare(CLONE_NEWNET): {e}")))?;
    restored.map_err(|e| {
        TaskError::Failed(format!(
            "writing the host's {CHILD_EHASH} back to {}: {e}; set it by hand",
            before.trim()
        ))
    })?;
    let _ = HOST_VALUES.set(host_only);

    let ehash = read_number(EHASH)?;
    if ehash != wanted as i64 {
        return Err(TaskError::Failed(format!(
            "the new namespace's established hash has {ehash} buckets, not {wanted} (the \
             kernel falls back to the host's when it cannot allocate the table; see dmesg)"
        )));
    }
    loopback_up().map_err(|e| TaskError::Failed(format!("bringing lo up: {e}")))?;
    let mut sysctls = Vec::new();
    for (key, value) in copied {
        let Ok(now) = fs::read_to_string(sysctl_path(key)) else {
            continue;
        };
        if now.split_whitespace().eq(value.split_whitespace()) {
            continue;
        }
        fs::write(sysctl_path(key), value.trim())
            .map_err(|e| TaskError::Failed(format!("writing {key} in the namespace: {e}")))?;
        sysctls.push(format!(
            "{key}={}",
            value.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    Ok(NetworkNamespace {
        ehash_entries: wanted,
        host_ehash_entries: host_ehash,
        sysctls,
    })
}

/// Can this process make a namespace with its own hash? One line naming
/// the cause and the fix (exit 2) when not.
pub(super) fn check_host() -> Result<(), TaskError> {
    let usage = |why: String| Err(TaskError::Usage(format!("--netns: {why}")));
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return usage(
            "creating a network namespace and sizing its hash need root \
             (CAP_SYS_ADMIN); run it as root, or without --netns"
                .to_string(),
        );
    }
    if !std::path::Path::new(CHILD_EHASH).exists() {
        return usage(format!(
            "this kernel has no {CHILD_EHASH} (Linux 6.1+ sizes a namespace's own \
             established hash); run without --netns, or on a newer kernel"
        ));
    }
    Ok(())
}

/// `unshare(CLONE_NEWNET)`: the calling thread leaves its network
/// namespace for a new, empty one.
fn unshare_network() -> io::Result<()> {
    // SAFETY: unshare takes flags only and touches no memory of ours;
    // CLONE_NEWNET changes only which namespace this thread's new sockets
    // and /proc/sys/net belong to.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets IFF_UP on `lo` (what `ip link set lo up` does), with the
/// SIOCGIFFLAGS / SIOCSIFFLAGS ioctls on any socket of the namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket takes plain integers; the result is checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own alone.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data (a name and a union of integers and
    // addresses), for which all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *to = *from as libc::c_char;
    }
    // SAFETY: the socket is open; `request` is a valid ifreq naming an
    // interface, which SIOCGIFFLAGS fills in and SIOCSIFFLAGS reads; it
    // outlives both calls.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut request) == -1 {
            return Err(io::Error::last_os_error());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS as _, &request) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Threads of this process (`/proc/self/status`).
fn threads() -> Option<u64> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

fn write_at_start(file: &mut File, value: &str) -> io::Result<()> {
    file.rewind()?;
    file.write_all(value.as_bytes())
}

fn read_number(path: &str) -> Result<i64, TaskError> {
    fs::read_to_string(path)
        .map_err(|e| TaskError::Failed(format!("reading {path}: {e}")))?
        .trim()
        .parse()
        .map_err(|e| TaskError::Failed(format!("{path} is not a number: {e}")))
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_has_a_bucket_per_socket_rounded_up_to_a_power_of_two() {
        let host = 1 << 18;
        // 1,001,000 connections are 2,002,000 sockets: 2^21 buckets.
        assert_eq!(ehash_entries_for(1_001_000, host), 1 << 21);
        assert_eq!(ehash_entries_for(1 << 20, host), 1 << 21);
        assert_eq!(ehash_entries_for(51_000, 1 << 10), 1 << 17);
        // Never smaller than the host's: a small run keeps its chains.
        assert_eq!(ehash_entries_for(51_000, host), host);
        // The kernel takes at most 16 Mi.
        assert_eq!(ehash_entries_for(100_000_000, host), 1 << 24);
        assert_eq!(ehash_entries_for(0, 0), 1);
    }

    #[test]
    fn only_per_namespace_sysctls_are_copied() {
        // A key that is host-wide would be written to the host, not the
        // namespace: none of these is under fs. or is tcp_mem.
        for key in PER_NAMESPACE {
            assert!(key.starts_with("net."), "{key}");
            assert!(!HOST_ONLY.contains(&key), "{key}");
        }
    }
}
