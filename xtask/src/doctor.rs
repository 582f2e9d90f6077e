//! `cargo xtask doctor`: can this host hold N concurrent loopback
//! connections? Checks every limit met on the way to a million, says what
//! each one needs, and prints exactly the commands that fix each shortfall
//! (`--apply` runs the sysctl ones, as root, never lowering a value).
//!
//! The arithmetic ([`checks`]) is a pure function of [`HostFacts`], so tests
//! feed it any host; [`HostFacts::read`] is the only part that looks at
//! `/proc`.

use std::fmt;
use std::fs;

use clap::Args;
use loadgen::spread::{FD_HEADROOM, HostLimits};

use crate::descriptor_watch::{self, DescriptorWatch};
use crate::first_touch::{self, FirstTouch};
use crate::results::format::thousands;
use crate::run::{TaskError, TaskResult};

#[derive(Args)]
pub struct DoctorArgs {
    /// Concurrent connections to check for (client and server both on this
    /// host: two sockets per connection).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    conns: u64,
    /// Write the /proc/sys values that fall short (root only). Never lowers
    /// a value; running it twice changes nothing the second time.
    #[arg(long)]
    apply: bool,
}

/// Kernel memory per socket end of an idle loopback connection, measured on
/// this project's 2-core VM: 1,006,961 connections (two ends each) took
/// about 10 GB of slab, ≈4.9 KB per end.
const KERNEL_BYTES_PER_SOCKET: u64 = 4_900;

/// Userland allowance per connection, server and loadgen together (an
/// idle connection costs tokio ≈1.9 KB; our later chapters aim far lower).
const USER_BYTES_PER_CONNECTION: u64 = 2_000;

/// Listen and SYN backlogs below this drop SYNs during a fast ramp
/// (thousands of connects in flight), and a dropped SYN waits 1 s to retry.
const BACKLOG_NEEDED: u64 = 4096;

/// Sockets per established-hash bucket above which every handshake
/// segment walks a long chain (a lookup per segment, both ends here).
const EHASH_SOCKETS_PER_BUCKET: u64 = 4;

/// Descriptors for everything else on the host (shells, daemons, cargo).
const SYSTEM_FD_SLACK: u64 = 65_536;

/// The widest ephemeral port range worth asking for: everything above the
/// privileged ports.
const FULL_PORT_RANGE: (u64, u64) = (1024, 65535);

/// Addresses of 127.0.0.0/8 usable as connection sources.
const LOOPBACK_SOURCES: u64 = (1 << 24) - 2;

/// Percent of one core a process outside the run may take, projected to the
/// run's descriptors, before the doctor warns about it.
const WATCHER_WARN_PERCENT: f64 = 10.0;

/// What the checks look at, read from `/proc` (or made up by a test).
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// CAP_SYS_RESOURCE: may this process raise its hard RLIMIT_NOFILE?
    pub can_raise_nofile: bool,
    pub nr_open: u64,
    pub file_max: u64,
    pub port_range: (u64, u64),
    pub somaxconn: u64,
    pub tcp_max_syn_backlog: u64,
    /// Buckets of this network namespace's established-connection hash
    /// (`net.ipv4.tcp_ehash_entries`; negative there when shared with the
    /// host's, which is the default); `None` before Linux 6.1.
    pub ehash_buckets: Option<u64>,
    /// Whose table that is.
    pub ehash_owner: EhashOwner,
    /// `None`: the nf_conntrack module is not loaded.
    pub conntrack: Option<Conntrack>,
    /// `net.ipv4.tcp_mem`: min, pressure, max, in pages.
    pub tcp_mem: (u64, u64, u64),
    pub page_size: u64,
    pub mem_available: u64,
    pub pid_max: u64,
    pub is_root: bool,
    /// What a first write to fresh memory costs against a second
    /// (measured by [`check_and_apply`] only; `None`: not measured).
    pub first_touch: Option<FirstTouch>,
    /// Which other process grew busier while many descriptors were open
    /// (measured by [`check_and_apply`] only; `None`: not measured).
    pub descriptor_watch: Option<DescriptorWatch>,
}

/// Whose established hash a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EhashOwner {
    /// The host's, in the host's network namespace.
    Host,
    /// The host's, shared by the network namespace this process is in.
    Shared,
    /// A network namespace's own (`tcp_child_ehash_entries` was set when it
    /// was created), as `cargo xtask million --netns` makes.
    Namespace,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conntrack {
    pub max: u64,
    /// Connections tracked right now (0 when no firewall rule uses it).
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Worth knowing, does not stop the run.
    Warn,
    /// A shortfall: the run will hit this limit.
    Fix,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fix => "FIX",
        })
    }
}

/// What would remove a shortfall.
#[derive(Debug, Clone, PartialEq)]
pub enum Remedy {
    /// Write `value` to `key` (`sysctl -w key=value`); `--apply` does this.
    Sysctl { key: &'static str, value: String },
    /// Something to do by hand (a shell limit, a firewall rule, memory).
    Manual(String),
}

impl Remedy {
    fn sysctl(key: &'static str, value: impl ToString) -> Remedy {
        Remedy::Sysctl {
            key,
            value: value.to_string(),
        }
    }

    /// The command line a reader would type.
    pub fn command(&self) -> String {
        match self {
            Remedy::Sysctl { key, value } if value.contains(' ') => {
                format!("sysctl -w {key}=\"{value}\"")
            }
            Remedy::Sysctl { key, value } => format!("sysctl -w {key}={value}"),
            Remedy::Manual(text) => text.clone(),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub current: String,
    pub needed: String,
    pub status: Status,
    /// Why, when the status is not plain OK.
    pub note: Option<String>,
    pub remedies: Vec<Remedy>,
}

impl Check {
    fn new(name: &'static str, current: String, needed: String, status: Status) -> Check {
        Check {
            name,
            current,
            needed,
            status,
            note: None,
            remedies: Vec::new(),
        }
    }

    fn note(mut self, note: String) -> Check {
        self.note = Some(note);
        self
    }

    fn remedy(mut self, remedy: Remedy) -> Check {
        self.remedies.push(remedy);
        self
    }
}

/// Connections one source address takes while connect() still finds a
/// port at once: loadgen's rule (`loadgen::spread` explains the measurement).
fn fast_ports_per_source((low, high): (u64, u64)) -> u64 {
    loadgen::spread::fast_ports_for_width(high.saturating_sub(low) + 1)
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

// ANCHOR: checks
/// Every check for `conns` connections with both ends on this host.
pub fn checks(host: &HostFacts, conns: u64) -> Vec<Check> {
    let sockets = 2 * conns;
    let one_process_needs = conns + FD_HEADROOM;
    let per_process = host.nofile_hard.saturating_sub(FD_HEADROOM).max(1);
    let processes_per_side = conns.div_ceil(per_process);
    let mut rows = Vec::new();

    // Descriptors per process. Our programs raise soft to hard themselves.
    let current = format!("soft {}, hard {}", host.nofile_soft, host.nofile_hard);
    let needed = format!("{one_process_needs} for one process a side");
    rows.push(if host.nofile_hard >= one_process_needs {
        Check::new("RLIMIT_NOFILE", current, needed, Status::Ok)
    } else if host.can_raise_nofile {
        Check::new("RLIMIT_NOFILE", current, needed, Status::Fix)
            .note(format!(
                "one process holds at most {per_process} connections; raise the limit in \
                 the shell that starts the server and loadgen (or LimitNOFILE= for a \
                 systemd unit, nofile in /etc/security/limits.conf)"
            ))
            .remedy(Remedy::Manual(format!("ulimit -n {one_process_needs}")))
    } else {
        Check::new("RLIMIT_NOFILE", current, needed, Status::Warn).note(format!(
            "the hard limit cannot be raised here (no CAP_SYS_RESOURCE): each side needs \
             {processes_per_side} processes of at most {per_process} connections; the \
             chapter 08 server and loadgen spread over them automatically"
        ))
    });

    // fs.nr_open caps what RLIMIT_NOFILE can be raised to.
    let nr_open_needed = if host.can_raise_nofile {
        one_process_needs
    } else {
        host.nofile_hard
    };
    let row = Check::new(
        "fs.nr_open",
        host.nr_open.to_string(),
        format!("{nr_open_needed} (per-process ceiling)"),
        Status::Ok,
    );
    rows.push(if host.nr_open >= nr_open_needed {
        row
    } else {
        Check {
            status: Status::Fix,
            ..row
        }
        .remedy(Remedy::sysctl("fs.nr_open", nr_open_needed))
    });

    // fs.file-max: all descriptors of all processes.
    let file_max_needed = sockets + SYSTEM_FD_SLACK;
    let row = Check::new(
        "fs.file-max",
        host.file_max.to_string(),
        format!("{file_max_needed} (2 x {conns} sockets + slack)"),
        Status::Ok,
    );
    rows.push(if host.file_max >= file_max_needed {
        row
    } else {
        Check {
            status: Status::Fix,
            ..row
        }
        .remedy(Remedy::sysctl("fs.file-max", file_max_needed))
    });

    // Ephemeral ports: width x source addresses; loadgen spreads over
    // 127.0.0.x with a quarter of a range on each (connect() searches the
    // even half first and slows down ~10-100x as it fills up).
    let (low, high) = host.port_range;
    let width = high.saturating_sub(low) + 1;
    let fast_per_source = fast_ports_per_source(host.port_range);
    let sources = conns.div_ceil(fast_per_source);
    let current = format!("{low}-{high} ({width} ports)");
    let needed = format!("{conns} over {sources} sources of 127.0.0.0/8");
    let (full_low, full_high) = FULL_PORT_RANGE;
    let widened = (low.min(full_low), high.max(full_high));
    let row = Check::new("ip_local_port_range", current, needed, Status::Ok);
    rows.push(if width * LOOPBACK_SOURCES < conns {
        Check {
            status: Status::Fix,
            ..row
        }
        .remedy(Remedy::sysctl(
            "net.ipv4.ip_local_port_range",
            format!("{} {}", widened.0, widened.1),
        ))
    } else if widened != (low, high) && sources > 1 {
        Check {
            status: Status::Warn,
            ..row
        }
        .note(format!(
            "loadgen spreads over {sources} loopback source addresses by itself; the full \
             range needs {} and leaves more ports for everything else",
            conns.div_ceil(fast_ports_per_source(widened))
        ))
        .remedy(Remedy::sysctl(
            "net.ipv4.ip_local_port_range",
            format!("{} {}", widened.0, widened.1),
        ))
    } else {
        row
    });

    // Accept queue and SYN queue.
    for (name, key, value) in [
        ("somaxconn", "net.core.somaxconn", host.somaxconn),
        (
            "tcp_max_syn_backlog",
            "net.ipv4.tcp_max_syn_backlog",
            host.tcp_max_syn_backlog,
        ),
    ] {
        let row = Check::new(
            name,
            value.to_string(),
            format!("{BACKLOG_NEEDED} for fast ramps"),
            Status::Ok,
        );
        rows.push(if value >= BACKLOG_NEEDED {
            row
        } else {
            Check {
                status: Status::Fix,
                ..row
            }
            .note(
                "a full queue drops SYNs, and a dropped SYN is retried only after 1 s".to_string(),
            )
            .remedy(Remedy::sysctl(key, BACKLOG_NEEDED))
        });
    }

    // The established hash: every segment of every handshake looks its
    // socket up there, walking a chain as long as sockets per bucket.
    if let Some(buckets) = host.ehash_buckets {
        let sockets = 2 * conns;
        let wanted = (sockets / EHASH_SOCKETS_PER_BUCKET).next_power_of_two();
        let whose = match host.ehash_owner {
            EhashOwner::Host => "",
            EhashOwner::Shared => ", the host's (shared)",
            EhashOwner::Namespace => ", this network namespace's own",
        };
        let row = Check::new(
            "tcp_ehash_entries",
            format!("{buckets} buckets{whose}"),
            format!("{wanted} for {sockets} sockets (<= {EHASH_SOCKETS_PER_BUCKET} a bucket)"),
            Status::Ok,
        );
        let chains = sockets.div_ceil(buckets.max(1));
        rows.push(if buckets >= wanted {
            row
        } else if host.ehash_owner == EhashOwner::Namespace {
            Check {
                status: Status::Warn,
                ..row
            }
            .note(format!(
                "chains of {chains} sockets a bucket, walked on every handshake segment: this \
                 namespace was made with a smaller table than the run needs; `cargo xtask \
                 million --netns` makes one sized for --conns"
            ))
            .remedy(Remedy::Manual("cargo xtask million --netns".to_string()))
        } else {
            Check {
                status: Status::Warn,
                ..row
            }
            .note(format!(
                "chains of {chains} sockets a bucket, walked on every handshake segment; the \
                 host's table is sized at boot (thash_entries=), a network namespace can have \
                 its own (net.ipv4.tcp_child_ehash_entries, Linux 6.1+): `cargo xtask million \
                 --netns` runs in one with a bucket per socket"
            ))
            .remedy(Remedy::Manual("cargo xtask million --netns".to_string()))
        });
    }

    // Connection tracking: one entry per connection (both directions).
    let conntrack_needed = conns + SYSTEM_FD_SLACK;
    rows.push(match host.conntrack {
        None => Check::new(
            "nf_conntrack",
            "module not loaded".to_string(),
            format!("{conntrack_needed} entries if loaded"),
            Status::Ok,
        ),
        Some(ct) if ct.max >= conntrack_needed => Check::new(
            "nf_conntrack_max",
            ct.max.to_string(),
            conntrack_needed.to_string(),
            Status::Ok,
        ),
        Some(ct) => {
            let status = if ct.count > 0 {
                Status::Fix
            } else {
                Status::Warn
            };
            let why = if ct.count > 0 {
                format!(
                    "{} connections are tracked now: a full table drops new connections \
                     (\"nf_conntrack: table full\" in dmesg)",
                    ct.count
                )
            } else {
                "loaded but tracking nothing now (no firewall rule uses it); if one \
                 starts to, the table fills and new connections are dropped"
                    .to_string()
            };
            Check::new(
                "nf_conntrack_max",
                format!("{} ({} in use)", ct.max, ct.count),
                conntrack_needed.to_string(),
                status,
            )
            .note(why)
            .remedy(Remedy::sysctl(
                "net.netfilter.nf_conntrack_max",
                conntrack_needed,
            ))
            .remedy(Remedy::Manual(
                "# or stop tracking loopback: iptables -t raw -I PREROUTING -i lo -j NOTRACK \
                 && iptables -t raw -I OUTPUT -o lo -j NOTRACK"
                    .to_string(),
            ))
        }
    });

    // tcp_mem counts pages of socket buffers in use: idle sockets hold
    // none; the worst case is a page on every connection at once.
    let (mem_min, mem_pressure, mem_max) = host.tcp_mem;
    let pages_needed = conns;
    let row = Check::new(
        "tcp_mem (pages)",
        format!(
            "{mem_min} {mem_pressure} {mem_max} (max {})",
            gb(mem_max * host.page_size)
        ),
        format!("max {pages_needed} (a page in flight on every connection)"),
        Status::Ok,
    );
    rows.push(if mem_max >= pages_needed {
        row
    } else {
        Check {
            status: Status::Warn,
            ..row
        }
        .note(
            "idle connections use no tcp_mem, so holding them is fine; pinging all of \
             them at once could reach the limit, and then TCP stalls"
                .to_string(),
        )
        .remedy(Remedy::sysctl(
            "net.ipv4.tcp_mem",
            format!(
                "{mem_min} {} {}",
                mem_pressure.max(pages_needed / 2),
                pages_needed
            ),
        ))
    });

    // Memory: kernel socket state for both ends, plus userland.
    let memory_needed = sockets * KERNEL_BYTES_PER_SOCKET + conns * USER_BYTES_PER_CONNECTION;
    let row = Check::new(
        "memory",
        format!("{} available", gb(host.mem_available)),
        format!(
            "{} (2 x {conns} x 4.9 KB kernel + 2 KB userland each)",
            gb(memory_needed)
        ),
        Status::Ok,
    );
    rows.push(if host.mem_available >= memory_needed {
        row
    } else {
        Check {
            status: Status::Fix,
            ..row
        }
        .remedy(Remedy::Manual(format!(
            "free memory or try fewer connections: about {} fit (--conns)",
            host.mem_available / (2 * KERNEL_BYTES_PER_SOCKET + USER_BYTES_PER_CONNECTION)
        )))
    });

    // Fresh memory: in a virtual machine that hands free memory back to
    // its hypervisor, the first write to a page is a fault there too, and
    // the ramp's socket slabs are gigabytes of fresh pages. Nothing inside
    // the guest changes it; the row says what the ramp will pay.
    if let Some(touch) = &host.first_touch {
        let row = Check::new(
            "memory first touch",
            touch.describe(),
            "about as fast as the second touch".to_string(),
            Status::Ok,
        );
        rows.push(if touch.first_is_slow() {
            Check {
                status: Status::Warn,
                ..row
            }
            .note(
                "the first write to a page the kernel takes from its free memory costs a \
                 fault in the hypervisor as well (a VM whose free memory is handed back, e.g. \
                 virtio-balloon free page reporting); the kernel's socket slabs for the ramp \
                 are such pages, and the ramp pays it inside allocate_slab; `cargo xtask \
                 million --pre-touch GIB` writes to fresh memory right before the ramp, which \
                 measures what it costs the ramp (it moves the cost, it does not remove it)"
                    .to_string(),
            )
        } else {
            row
        });
    }

    // Other processes that pay per descriptor: an agent that walks every
    // process's descriptors every few seconds is cheap beside a desktop and
    // busy beside two million sockets, on the same cores as the run.
    if let Some(watch) = &host.descriptor_watch {
        let descriptors = 2 * conns;
        let projected = watch.projected_percent(descriptors);
        let row = Check::new(
            "descriptor watchers",
            watch.describe(),
            "no process busier with more descriptors open".to_string(),
            Status::Ok,
        );
        rows.push(match &watch.watcher {
            Some((name, _)) if projected >= WATCHER_WARN_PERCENT => Check {
                status: Status::Warn,
                ..row
            }
            .note(format!(
                "{name} pays per descriptor held by other processes (an agent that walks \
                 /proc/PID/fd, or the socket table); if that grows in proportion, {} \
                 connections ({} descriptors on this host) cost it about {projected:.0}% of \
                 a core beside the run, in the ramp and in every probe with them held; \
                 nothing in the run changes it: read the report's `other processes` lines \
                 with it in mind",
                thousands(conns),
                thousands(descriptors),
            )),
            _ => row,
        });
    }

    // Processes: only a limit when the descriptor limit forces many.
    let processes = 2 * processes_per_side;
    let row = Check::new(
        "kernel.pid_max",
        host.pid_max.to_string(),
        format!("> {processes} processes (both sides)"),
        Status::Ok,
    );
    rows.push(if host.pid_max > processes + 1000 {
        row
    } else {
        Check {
            status: Status::Fix,
            ..row
        }
        .remedy(Remedy::sysctl("kernel.pid_max", processes + 32_768))
    });
    rows
}
// ANCHOR_END: checks

/// Prints the table, the notes and the fix commands.
pub fn print(rows: &[Check], conns: u64) {
    println!(
        "doctor: can this host hold {conns} concurrent loopback connections \
         ({} sockets, both ends here)?\n",
        2 * conns
    );
    let width = |f: fn(&Check) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (
        width(|r| r.name, "check"),
        width(|r| &r.current, "current"),
        width(|r| &r.needed, "needed"),
    );
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  status",
        "check", "current", "needed"
    );
    for r in rows {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r.name, r.current, r.needed, r.status
        );
    }
    let noted: Vec<&Check> = rows.iter().filter(|r| r.note.is_some()).collect();
    if !noted.is_empty() {
        println!();
        for r in noted {
            if let Some(note) = &r.note {
                println!("{} ({}): {note}", r.name, r.status);
            }
        }
    }
    let fixes: Vec<&Check> = rows
        .iter()
        .filter(|r| r.status != Status::Ok && !r.remedies.is_empty())
        .collect();
    if fixes.is_empty() {
        println!("\nnothing to fix");
    } else {
        println!("\nto fix (as root; `cargo xtask doctor --apply` runs the sysctl lines):");
        for r in fixes {
            for remedy in &r.remedies {
                println!("  {}", remedy.command());
            }
        }
    }
}

impl HostFacts {
    /// Reads this host's values from /proc (Linux).
    pub fn read() -> Result<HostFacts, String> {
        let limits = HostLimits::of_this_host().map_err(|e| e.to_string())?;
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let status_field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        // CapEff is a hex mask; CAP_SYS_RESOURCE is bit 24.
        let caps = u64::from_str_radix(&status_field("CapEff:"), 16).unwrap_or(0);
        // Uid: real, effective, saved, fs.
        let euid = status_field("Uid:")
            .split_whitespace()
            .nth(1)
            .map(str::to_string);
        let mem_available_kb = crate::procfs::meminfo_bytes("MemAvailable")
            .map(|bytes| bytes / 1024)
            .ok_or("cannot read MemAvailable from /proc/meminfo")?;
        let tcp_mem = numbers(&sysctl_read("net.ipv4.tcp_mem")?);
        let ehash = sysctl_read("net.ipv4.tcp_ehash_entries")
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok());
        let port_range = numbers(&sysctl_read("net.ipv4.ip_local_port_range")?);
        let conntrack = match sysctl_read("net.netfilter.nf_conntrack_max") {
            Ok(max) => Some(Conntrack {
                max: number(&max)?,
                count: sysctl_read("net.netfilter.nf_conntrack_count")
                    .and_then(|c| number(&c))
                    .unwrap_or(0),
            }),
            Err(_) => None,
        };
        Ok(HostFacts {
            nofile_soft: loadgen::cpu::fd_soft_limit(),
            nofile_hard: limits.nofile_hard,
            can_raise_nofile: caps & (1 << 24) != 0,
            nr_open: number(&sysctl_read("fs.nr_open")?)?,
            file_max: number(&sysctl_read("fs.file-max")?)?,
            port_range: match port_range[..] {
                [low, high] => (low, high),
                _ => return Err("cannot parse net.ipv4.ip_local_port_range".to_string()),
            },
            somaxconn: number(&sysctl_read("net.core.somaxconn")?)?,
            tcp_max_syn_backlog: number(&sysctl_read("net.ipv4.tcp_max_syn_backlog")?)?,
            ehash_buckets: ehash.map(i64::unsigned_abs),
            ehash_owner: match ehash {
                Some(entries) if entries < 0 => EhashOwner::Shared,
                _ if in_a_namespace_of_its_own() => EhashOwner::Namespace,
                _ => EhashOwner::Host,
            },
            conntrack,
            tcp_mem: match tcp_mem[..] {
                [a, b, c] => (a, b, c),
                _ => return Err("cannot parse net.ipv4.tcp_mem".to_string()),
            },
            // x86-64 and arm64 Linux as set up by distributions: 4 KiB.
            page_size: 4096,
            mem_available: mem_available_kb * 1024,
            pid_max: number(&sysctl_read("kernel.pid_max")?)?,
            is_root: euid.as_deref() == Some("0"),
            first_touch: None,
            descriptor_watch: None,
        })
    }
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// A sysctl's value. Inside a network namespace `cargo xtask million
/// --netns` made, the host-wide ones it cannot see (`net.ipv4.tcp_mem`)
/// are as read on the host just before.
fn sysctl_read(key: &str) -> Result<String, String> {
    fs::read_to_string(sysctl_path(key)).or_else(|e| {
        crate::million::netns::host_value(key).ok_or_else(|| format!("cannot read {key}: {e}"))
    })
}

/// Is this process in a network namespace other than the host's, and
/// one with its own hash? Known for sure when xtask made it; otherwise
/// compared with init's namespace where that can be read.
fn in_a_namespace_of_its_own() -> bool {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    crate::million::netns::entered()
        || matches!((ns("self"), ns("1")), (Some(mine), Some(init)) if mine != init)
}

fn numbers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn number(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("not a number: {text:?}: {e}"))
}

/// The value to write for `key`: `wanted`, but never below what is there
/// now (for a range: the union of both ranges; for lists: each entry's max).
pub fn never_lower(key: &str, current: &str, wanted: &str) -> String {
    let (now, want) = (numbers(current), numbers(wanted));
    if now.len() != want.len() || now.is_empty() {
        return wanted.to_string();
    }
    let merged: Vec<u64> = if key == "net.ipv4.ip_local_port_range" {
        vec![now[0].min(want[0]), now[1].max(want[1])]
    } else {
        now.iter().zip(&want).map(|(a, b)| *a.max(b)).collect()
    };
    merged
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes every sysctl remedy of a non-OK row; reports each.
fn apply(rows: &[Check]) -> Result<(), TaskError> {
    let writable = |r: &&Check| {
        r.status != Status::Ok
            && r.remedies
                .iter()
                .any(|remedy| matches!(remedy, Remedy::Sysctl { .. }))
    };
    if !rows.iter().any(|r| writable(&r)) {
        println!("nothing to apply");
    }
    for r in rows.iter().filter(writable) {
        for remedy in &r.remedies {
            let Remedy::Sysctl { key, value } = remedy else {
                continue;
            };
            if !std::path::Path::new(&sysctl_path(key)).exists() {
                println!(
                    "{key}: host-wide, not visible in this network namespace: set it on the host"
                );
                continue;
            }
            let before = sysctl_read(key).map_err(TaskError::Failed)?;
            let value = never_lower(key, &before, value);
            if numbers(&before) == numbers(&value) {
                println!("{key}: already {}", before.trim());
                continue;
            }
            fs::write(sysctl_path(key), &value)
                .map_err(|e| TaskError::Failed(format!("writing {key} = {value}: {e}")))?;
            let after = sysctl_read(key).map_err(TaskError::Failed)?;
            println!(
                "{key}: {} -> {}",
                before.trim().replace('\t', " "),
                after.trim().replace('\t', " ")
            );
        }
    }
    Ok(())
}

pub fn run(args: &DoctorArgs) -> TaskResult {
    let rows = check_and_apply(args.conns, args.apply)?;
    let short = rows.iter().filter(|r| r.status == Status::Fix).count();
    if short > 0 {
        return Err(TaskError::Failed(format!(
            "{short} shortfall(s) for {} connections",
            args.conns
        )));
    }
    Ok(())
}

/// Reads the host, prints the table, and with `apply` writes the sysctls
/// that fall short and prints the table again. Returns the final rows.
pub fn check_and_apply(conns: u64, apply_fixes: bool) -> Result<Vec<Check>, TaskError> {
    if conns == 0 {
        return Err(TaskError::Usage("--conns must be at least 1".to_string()));
    }
    let mut facts = HostFacts::read().map_err(TaskError::Failed)?;
    facts.first_touch = first_touch::measure(first_touch::MEASURED_BYTES).ok();
    facts.descriptor_watch =
        descriptor_watch::measure(descriptor_watch::DESCRIPTORS, descriptor_watch::WINDOW).ok();
    let mut rows = checks(&facts, conns);
    print(&rows, conns);
    if apply_fixes {
        if !facts.is_root {
            return Err(TaskError::Usage(
                "--apply writes /proc/sys and needs root: run it with sudo, or type the \
                 commands above"
                    .to_string(),
            ));
        }
        println!("\napplying:");
        apply(&rows)?;
        let facts = HostFacts {
            first_touch: facts.first_touch,
            descriptor_watch: facts.descriptor_watch.clone(),
            ..HostFacts::read().map_err(TaskError::Failed)?
        };
        rows = checks(&facts, conns);
        println!();
        print(&rows, conns);
    }
    Ok(rows)
}

/// Inside a network namespace of its own: raises this namespace's own
/// sysctls (those of [`crate::million::netns::PER_NAMESPACE`]) where the
/// checks for `conns` find them short, never lowering one; the host's are
/// not touched. Returns what it wrote, as `key: before -> after`.
pub fn raise_in_namespace(conns: u64) -> Result<Vec<String>, TaskError> {
    let facts = HostFacts::read().map_err(TaskError::Failed)?;
    let mut written = Vec::new();
    for row in checks(&facts, conns)
        .iter()
        .filter(|r| r.status != Status::Ok)
    {
        for remedy in &row.remedies {
            let Remedy::Sysctl { key, value } = remedy else {
                continue;
            };
            if !crate::million::netns::PER_NAMESPACE.contains(key) {
                continue;
            }
            let before = sysctl_read(key).map_err(TaskError::Failed)?;
            let value = never_lower(key, &before, value);
            if numbers(&before) == numbers(&value) {
                continue;
            }
            fs::write(sysctl_path(key), &value)
                .map_err(|e| TaskError::Failed(format!("writing {key} = {value}: {e}")))?;
            written.push(format!(
                "{key}: {} -> {value}",
                before.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    Ok(written)
}

/// The fix commands of every shortfall (FIX rows), one per line.
pub fn fix_commands(rows: &[Check]) -> Vec<String> {
    rows.iter()
        .filter(|r| r.status == Status::Fix)
        .flat_map(|r| r.remedies.iter().map(Remedy::command))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The project's VM as it boots: RLIMIT_NOFILE 20000 that cannot be
    /// raised, default port range, conntrack loaded but idle.
    fn this_vm() -> HostFacts {
        HostFacts {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            can_raise_nofile: false,
            nr_open: 1_048_576,
            file_max: 2_466_170,
            port_range: (32768, 60999),
            somaxconn: 4096,
            tcp_max_syn_backlog: 2048,
            ehash_buckets: Some(262_144),
            ehash_owner: EhashOwner::Host,
            conntrack: Some(Conntrack {
                max: 262_144,
                count: 0,
            }),
            tcp_mem: (287_898, 383_867, 575_796),
            page_size: 4096,
            mem_available: 23_831_324 * 1024,
            pid_max: 32_768,
            is_root: true,
            first_touch: None,
            descriptor_watch: None,
        }
    }

    fn row<'a>(rows: &'a [Check], name: &str) -> &'a Check {
        rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn a_million_on_this_vm_needs_51_processes_and_a_bigger_syn_backlog() {
        let rows = checks(&this_vm(), 1_000_000);
        let nofile = row(&rows, "RLIMIT_NOFILE");
        assert_eq!(nofile.status, Status::Warn);
        assert!(nofile.note.as_ref().unwrap().contains("51 processes"));
        assert_eq!(row(&rows, "fs.nr_open").status, Status::Ok);
        assert_eq!(row(&rows, "fs.file-max").status, Status::Ok);
        assert_eq!(row(&rows, "somaxconn").status, Status::Ok);
        let syn = row(&rows, "tcp_max_syn_backlog");
        assert_eq!(syn.status, Status::Fix);
        assert_eq!(
            syn.remedies[0].command(),
            "sysctl -w net.ipv4.tcp_max_syn_backlog=4096"
        );
        let ports = row(&rows, "ip_local_port_range");
        assert_eq!(ports.status, Status::Warn);
        assert_eq!(ports.needed, "1000000 over 142 sources of 127.0.0.0/8");
        // A quarter of 1024-65535 per source: ceil(1e6 / 16128) = 63.
        assert!(
            ports
                .note
                .as_ref()
                .unwrap()
                .contains("the full range needs 63"),
            "{:?}",
            ports.note
        );
        assert_eq!(
            ports.remedies[0].command(),
            "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
        );
        assert_eq!(row(&rows, "nf_conntrack_max").status, Status::Warn);
        assert_eq!(row(&rows, "memory").status, Status::Ok);
    }

    #[test]
    fn a_roomy_host_passes_everything() {
        let host = HostFacts {
            nofile_soft: 1024,
            nofile_hard: 2_000_000,
            nr_open: 2_000_000,
            file_max: 9_000_000,
            port_range: (1024, 65535),
            somaxconn: 65_535,
            tcp_max_syn_backlog: 65_535,
            ehash_buckets: Some(1 << 19),
            conntrack: None,
            tcp_mem: (1_000_000, 1_500_000, 2_000_000),
            pid_max: 4_194_304,
            ..this_vm()
        };
        let rows = checks(&host, 1_000_000);
        let not_ok: Vec<_> = rows.iter().filter(|r| r.status != Status::Ok).collect();
        assert!(not_ok.is_empty(), "{not_ok:#?}");
    }

    #[test]
    fn a_small_established_hash_is_named_with_the_namespace_remedy() {
        let rows = checks(&this_vm(), 1_000_000);
        let ehash = row(&rows, "tcp_ehash_entries");
        assert_eq!(ehash.status, Status::Warn);
        assert!(ehash.needed.starts_with("524288"), "{ehash:?}");
        assert!(
            ehash
                .note
                .as_deref()
                .is_some_and(|n| n.contains("chains of 8"))
        );
        assert_eq!(
            ehash.remedies,
            [Remedy::Manual("cargo xtask million --netns".to_string())]
        );
        assert_eq!(
            row(&checks(&this_vm(), 50_000), "tcp_ehash_entries").status,
            Status::Ok
        );
    }

    #[test]
    fn inside_a_namespace_the_row_reads_its_own_hash() {
        // What `cargo xtask million --netns` makes for a million and the
        // active thousand: 2^21 buckets, a socket per bucket at most.
        let own = HostFacts {
            ehash_buckets: Some(1 << 21),
            ehash_owner: EhashOwner::Namespace,
            ..this_vm()
        };
        let ehash = checks(&own, 1_000_000)
            .into_iter()
            .find(|r| r.name == "tcp_ehash_entries")
            .unwrap();
        assert_eq!(ehash.status, Status::Ok);
        assert_eq!(
            ehash.current,
            "2097152 buckets, this network namespace's own"
        );
        // A namespace made with too small a table says so, with the fix.
        let small = HostFacts {
            ehash_buckets: Some(1 << 16),
            ..own
        };
        let rows = checks(&small, 1_000_000);
        let ehash = row(&rows, "tcp_ehash_entries");
        assert_eq!(ehash.status, Status::Warn);
        assert!(
            ehash
                .note
                .as_deref()
                .is_some_and(|n| n.contains("chains of 31") && n.contains("--netns")),
            "{ehash:?}"
        );
        let shared = HostFacts {
            ehash_owner: EhashOwner::Shared,
            ..this_vm()
        };
        assert!(
            row(&checks(&shared, 10), "tcp_ehash_entries")
                .current
                .ends_with("the host's (shared)")
        );
    }

    #[test]
    fn a_raisable_limit_gets_ulimit_and_nr_open_commands() {
        let host = HostFacts {
            can_raise_nofile: true,
            ..this_vm()
        };
        let rows = checks(&host, 2_000_000);
        let nofile = row(&rows, "RLIMIT_NOFILE");
        assert_eq!(nofile.status, Status::Fix);
        assert_eq!(nofile.remedies[0].command(), "ulimit -n 2000100");
        let nr_open = row(&rows, "fs.nr_open");
        assert_eq!(nr_open.status, Status::Fix);
        assert_eq!(
            nr_open.remedies[0].command(),
            "sysctl -w fs.nr_open=2000100"
        );
        // 4M sockets + slack is more than this VM's file-max.
        assert_eq!(row(&rows, "fs.file-max").status, Status::Fix);
    }

    #[test]
    fn conntrack_that_tracks_is_a_shortfall_and_idle_or_absent_is_not() {
        let tracking = HostFacts {
            conntrack: Some(Conntrack {
                max: 262_144,
                count: 12,
            }),
            ..this_vm()
        };
        let rows = checks(&tracking, 1_000_000);
        let ct = row(&rows, "nf_conntrack_max");
        assert_eq!(ct.status, Status::Fix);
        assert!(ct.remedies.iter().any(|r| r.command().contains("NOTRACK")));
        let absent = HostFacts {
            conntrack: None,
            ..this_vm()
        };
        assert_eq!(
            row(&checks(&absent, 1_000_000), "nf_conntrack").status,
            Status::Ok
        );
    }

    #[test]
    fn a_slow_first_touch_is_a_warning_that_names_where_the_ramp_pays_it() {
        let touched = |first, again| HostFacts {
            first_touch: Some(FirstTouch {
                first_gib_per_s: first,
                again_gib_per_s: again,
                free_page_reporting: Some(true),
            }),
            ..this_vm()
        };
        let rows = checks(&touched(0.9, 3.3), 1_000_000);
        let touch = row(&rows, "memory first touch");
        assert_eq!(touch.status, Status::Warn);
        assert!(touch.note.as_deref().unwrap().contains("allocate_slab"));
        assert!(touch.remedies.is_empty(), "nothing to fix from inside");
        let rows = checks(&touched(3.0, 3.3), 1_000_000);
        assert_eq!(row(&rows, "memory first touch").status, Status::Ok);
        let unmeasured = checks(&this_vm(), 1_000_000);
        assert!(!unmeasured.iter().any(|r| r.name == "memory first touch"));
    }

    #[test]
    fn a_process_that_pays_per_descriptor_is_projected_to_the_run() {
        let watched = |rise: Option<f64>| HostFacts {
            descriptor_watch: Some(DescriptorWatch {
                descriptors: 400_000,
                watcher: rise.map(|r| ("agent (pid 1)".to_string(), r)),
            }),
            ..this_vm()
        };
        // +8% with 400,000 open: 2,000,000 at a million is about 40%.
        let rows = checks(&watched(Some(8.0)), 1_000_000);
        let watch = row(&rows, "descriptor watchers");
        assert_eq!(watch.status, Status::Warn);
        let note = watch.note.as_deref().unwrap();
        assert!(
            note.contains("agent (pid 1)") && note.contains("about 40%"),
            "{note}"
        );
        assert!(watch.remedies.is_empty(), "not the run's to fix");
        // The same agent is harmless beside a small run.
        let rows = checks(&watched(Some(8.0)), 10_000);
        assert_eq!(row(&rows, "descriptor watchers").status, Status::Ok);
        let rows = checks(&watched(None), 1_000_000);
        assert_eq!(row(&rows, "descriptor watchers").status, Status::Ok);
        let unmeasured = checks(&this_vm(), 1_000_000);
        assert!(!unmeasured.iter().any(|r| r.name == "descriptor watchers"));
    }

    #[test]
    fn too_little_memory_says_how_many_connections_fit() {
        let small = HostFacts {
            mem_available: 4_000_000_000,
            ..this_vm()
        };
        let rows = checks(&small, 1_000_000);
        let memory = row(&rows, "memory");
        assert_eq!(memory.status, Status::Fix);
        // 4e9 / (2 x 4900 + 2000) = 338,983.
        assert!(memory.remedies[0].command().contains("about 338983 fit"));
        assert_eq!(row(&checks(&small, 100_000), "memory").status, Status::Ok);
    }

    #[test]
    fn applying_never_lowers_a_value() {
        assert_eq!(never_lower("net.core.somaxconn", "8192\n", "4096"), "8192");
        assert_eq!(never_lower("net.core.somaxconn", "128\n", "4096"), "4096");
        assert_eq!(
            never_lower(
                "net.ipv4.ip_local_port_range",
                "32768\t60999\n",
                "1024 65535"
            ),
            "1024 65535"
        );
        // A range already wider at one end keeps that end.
        assert_eq!(
            never_lower("net.ipv4.ip_local_port_range", "500\t61000\n", "1024 65535"),
            "500 65535"
        );
        assert_eq!(
            never_lower("net.ipv4.tcp_mem", "10 900 30", "10 500 1000"),
            "10 900 1000"
        );
    }

    #[test]
    fn a_small_run_needs_nothing_but_the_syn_backlog() {
        let rows = checks(&this_vm(), 10_000);
        let fixes: Vec<_> = rows
            .iter()
            .filter(|r| r.status == Status::Fix)
            .map(|r| r.name)
            .collect();
        assert_eq!(fixes, ["tcp_max_syn_backlog"]);
        assert_eq!(row(&rows, "RLIMIT_NOFILE").status, Status::Ok);
    }
}
