//! The one parser for `/proc/PID/stat`: a process's name, state, parent,
//! flags and CPU time, as `proc(5)` lays them out.
//!
//! The line is `pid (comm) state ppid …`, and `comm`, the command name, is
//! whatever the process called itself: it may hold spaces and parentheses
//! (`(sd-pam)`, `tmux: server`, a thread named `a) S 7 (`). So the fields
//! are counted from the *last* `)` on the line, never by splitting the
//! whole line at spaces.
//!
//! Parsing is plain string work and builds everywhere; reading the file is
//! left to the callers, behind `cfg(target_os = "linux")`.

use std::time::Duration;

/// `PF_KTHREAD` in the `flags` field: the process is a kernel thread
/// (`kthreadd`, `ksoftirqd/0`, …), shown in brackets by `ps`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of one `/proc/PID/stat` line that this repository reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Field 1: the process id.
    pub pid: u32,
    /// Field 2, without its parentheses: the command name (at most 15
    /// bytes, set by the process itself).
    pub comm: String,
    /// Field 3: `R` running, `S` sleeping, `D` disk sleep, `Z` zombie, …
    pub state: char,
    /// Field 4: the parent's pid (0 for `init` and `kthreadd`).
    pub ppid: u32,
    /// Field 9: the kernel's `PF_*` flags.
    pub flags: u64,
    /// Field 14: time in user mode, in clock ticks (`sysconf(_SC_CLK_TCK)`).
    pub utime: u64,
    /// Field 15: time in kernel mode, in clock ticks.
    pub stime: u64,
}

impl Stat {
    /// Parses one `/proc/PID/stat` line; `None` if it is not one (cut
    /// short, a field that is not a number, no name in parentheses).
    pub fn parse(line: &str) -> Option<Stat> {
        let open = line.find('(')?;
        let close = line.rfind(')')?;
        let pid = line[..open].trim().parse().ok()?;
        let comm = line.get(open + 1..close)?.to_string();
        // Field N of proc(5) is word N - 3 after the name: state is 3.
        let after_name: Vec<&str> = line[close + 1..].split_whitespace().collect();
        let field = |number: usize| after_name.get(number - 3).copied();
        let state = single_char(field(3)?)?;
        let ppid = field(4)?.parse().ok()?;
        let flags = field(9)?.parse().ok()?;
        let utime = field(14)?.parse().ok()?;
        let stime = field(15)?.parse().ok()?;
        Some(Stat {
            pid,
            comm,
            state,
            ppid,
            flags,
            utime,
            stime,
        })
    }

    /// User plus kernel time, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }

    /// Whether this is a kernel thread rather than a user process.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// The unit of `/proc/PID/stat`'s times: `sysconf(_SC_CLK_TCK)`, or 100
/// (what nearly every Linux uses) should it ever fail.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// `ticks` clock ticks as a [`Duration`], at `ticks_per_second`
/// (`sysconf(_SC_CLK_TCK)`, 100 on nearly every Linux).
pub fn ticks_to_duration(ticks: u64, ticks_per_second: u64) -> Duration {
    let per_second = ticks_per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

fn single_char(field: &str) -> Option<char> {
    let mut chars = field.chars();
    let first = chars.next()?;
    chars.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line (`cat /proc/self/stat`), all 52 fields.
    const CAT: &str = "2743 (cat) R 2737 2737 31948 0 -1 4194304 99 0 0 0 7 3 0 0 20 0 1 0 \
        2951240 3133440 393 18446744073709551615 94183250034688 94183250054569 \
        140723217153776 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94183250070576 94183250072192 \
        94183358705664 140723217156819 140723217156839 140723217156839 140723217158123 0\n";

    #[test]
    fn reads_every_field_of_a_real_line() {
        let stat = Stat::parse(CAT).unwrap();
        assert_eq!(
            stat,
            Stat {
                pid: 2743,
                comm: "cat".to_string(),
                state: 'R',
                ppid: 2737,
                flags: 4_194_304,
                utime: 7,
                stime: 3,
            }
        );
        assert_eq!(stat.cpu_ticks(), 10);
        assert!(!stat.is_kernel_thread());
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_is_read_whole() {
        // A name built to fool a parser that splits at spaces or at the
        // first ')': it looks like the start of another line.
        let line = "42 (a) S 7 (b c) S 1 42 42 0 -1 2097216 0 0 0 0 150 25 0 0 20 0 1 0";
        let stat = Stat::parse(line).unwrap();
        assert_eq!(stat.comm, "a) S 7 (b c");
        assert_eq!((stat.state, stat.ppid), ('S', 1));
        assert_eq!((stat.utime, stat.stime), (150, 25));
        assert_eq!(
            Stat::parse("7 () Z 1 7 7 0 -1 0 0 0 0 0 0 0").unwrap().comm,
            ""
        );
    }

    #[test]
    fn kernel_threads_are_told_by_their_flags() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 5 0 0 20 0 1 0 24 0 0";
        let stat = Stat::parse(kthreadd).unwrap();
        assert_eq!((stat.pid, stat.ppid, stat.stime), (2, 0, 5));
        assert!(stat.is_kernel_thread(), "flags 2129984 include PF_KTHREAD");
        let softirq = "14 (ksoftirqd/0) S 2 0 0 0 -1 69238848 0 0 0 0 0 310 0 0 20 0 1 0 3";
        assert_eq!(Stat::parse(softirq).unwrap().comm, "ksoftirqd/0");
    }

    #[test]
    fn malformed_lines_are_none() {
        for line in [
            "",
            "42 (truncated",
            "42 cat) R 1 1 1 0 -1 0 0 0 0 0 1 2",
            "x (cat) R 1 1 1 0 -1 0 0 0 0 0 1 2",
            "42 (cat) R 1 1 1 0 -1 0 0 0 0 0 1",     // no stime
            "42 (cat) R one 1 1 0 -1 0 0 0 0 0 1 2", // ppid not a number
            "42 (cat) RS 1 1 1 0 -1 0 0 0 0 0 1 2",  // state not one letter
            "42 (cat) R 1 1 1 0 -1 0 0 0 0 0 1 -2",  // negative ticks
            "42 (cat)",
        ] {
            assert_eq!(Stat::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn ticks_become_a_duration_without_losing_the_fraction() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(ticks_to_duration(u64::MAX, 100).as_secs(), u64::MAX / 100);
        assert_eq!(ticks_to_duration(5, 0), Duration::from_secs(5));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_parses() {
        let line = std::fs::read_to_string("/proc/self/stat").unwrap();
        let stat = Stat::parse(&line).unwrap();
        assert_eq!(stat.pid, std::process::id());
        assert!(!stat.is_kernel_thread());
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
    }
}
