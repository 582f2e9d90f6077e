//! Start a server binary that follows the echo contract, and watch it.
//!
//! [`ServerProcess`] is how tests, benchmarks and the results matrix run a
//! server: it adds `--addr 127.0.0.1:0`, waits for the `listening on HOST:PORT`
//! line the contract promises, keeps draining the child's stdout and stderr (a
//! child blocked on a full pipe would look like a hung server), and reads what
//! the kernel knows about the process from `/proc`: resident memory, open
//! descriptors, CPU time, threads.
//!
//! ```no_run
//! use loadgen::server::ServerProcess;
//!
//! let server = ServerProcess::builder("target/release/ch02-epoll-level-triggered")
//!     .args(["--work-us", "0"])
//!     .nofile_limit(1024)
//!     .spawn()?;
//! println!("server {} on {}", server.pid(), server.addr());
//! let shutdown = server.shutdown()?;
//! println!("{}", shutdown.summary_line().unwrap_or("no summary"));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a server may take to print `listening on HOST:PORT`.
/// Generous: a debug build on a loaded 2-core box can be slow to start.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`ServerProcess::shutdown`] waits after SIGINT before SIGKILL.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait for the output drainers once the child has exited. They end
/// at EOF on the pipes, which a grandchild that inherited them can delay forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The first stdout line of every server, before the bound address.
const LISTENING_PREFIX: &str = "listening on ";

/// Settings for starting a server; made by [`ServerProcess::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    bin: PathBuf,
    listen: SocketAddr,
    args: Vec<OsString>,
    nofile_limit: Option<u64>,
    cpu: Option<usize>,
    startup_timeout: Duration,
}

impl ServerBuilder {
    /// Listens on `addr` instead of `127.0.0.1:0` (its `--addr`). An
    /// unspecified host (`0.0.0.0:0`) listens on every address of the
    /// host, reachable from outside it: only for a host (or a network
    /// namespace) that has nothing but loopback.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Appends one argument (after `--addr 127.0.0.1:0`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends several arguments (after `--addr 127.0.0.1:0`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Sets the child's `RLIMIT_NOFILE` (soft and hard) to `limit`, e.g. to
    /// make it run out of descriptors on purpose. It can only be lowered
    /// below the current hard limit, not raised above it.
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile_limit = Some(limit);
        self
    }

    /// Pins the child to one CPU core (Linux only; elsewhere `spawn` fails
    /// with `ErrorKind::Unsupported`).
    pub fn cpu(mut self, core: usize) -> Self {
        self.cpu = Some(core);
        self
    }

    /// How long to wait for the `listening on` line (default 20 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server and waits until it has printed `listening on HOST:PORT`.
    pub fn spawn(self) -> io::Result<ServerProcess> {
        let mut command = Command::new(&self.bin);
        command
            .arg("--addr")
            .arg(self.listen.to_string())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        limit_child(&mut command, self.nofile_limit, self.cpu)?;

        let mut child = command.spawn().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot start server {}: {err}", self.bin.display()),
            )
        })?;
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => (stdout, stderr),
            _ => return Err(io::Error::other("child has no stdout/stderr pipes")),
        };
        let output = Output::default();
        let (first_line_tx, first_line_rx) = mpsc::channel();
        let stdout_drainer = drain_stdout(stdout, output.clone(), first_line_tx);
        let stderr_drainer = drain_stderr(stderr, output.clone());

        let mut server = ServerProcess {
            pid: child.id(),
            child: Mutex::new(child),
            // Replaced below once the server says where it listens.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            bin: self.bin,
            output,
            drainers: vec![stdout_drainer, stderr_drainer],
        };
        match first_line_rx.recv_timeout(self.startup_timeout) {
            Ok(line) => match parse_listening_line(&line) {
                Some(addr) => server.addr = addr,
                None => {
                    return Err(server.startup_error(&format!(
                        "printed {line:?} as its first stdout line instead of `listening on HOST:PORT`"
                    )));
                }
            },
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed before a whole line: the server died (or closed
                // stdout). Wait briefly for its status so the error can show it.
                let status = server.wait_for_exit(DRAIN_TIMEOUT);
                let what = match status {
                    Some(status) => format!(
                        "exited ({}) before printing `listening on HOST:PORT`",
                        describe(status)
                    ),
                    None => "closed stdout before printing `listening on HOST:PORT`".to_owned(),
                };
                return Err(server.startup_error(&what));
            }
            Err(RecvTimeoutError::Timeout) => {
                let what = format!(
                    "printed no `listening on HOST:PORT` line within {:?}",
                    self.startup_timeout
                );
                return Err(server.startup_error(&what));
            }
        }
        Ok(server)
    }
}

/// Sets the descriptor limit and CPU affinity in the child between `fork` and `exec`.
fn limit_child(command: &mut Command, nofile: Option<u64>, cpu: Option<usize>) -> io::Result<()> {
    if nofile.is_none() && cpu.is_none() {
        return Ok(());
    }
    // Everything the child-side closure needs is prepared here, in the parent:
    // after `fork` only async-signal-safe calls are allowed (no allocation, no locks).
    let rlimit = nofile.map(|limit| libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    });
    let affinity = match cpu {
        Some(core) => Some(CpuSet::single(core)?),
        None => None,
    };
    let in_child = move || -> io::Result<()> {
        if let Some(rlimit) = &rlimit {
            // SAFETY: setrlimit is async-signal-safe; `rlimit` is a valid,
            // initialised struct that lives for the duration of the call.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, rlimit) } == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(affinity) = &affinity {
            affinity.apply_to_current_process()?;
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // setrlimit and sched_setaffinity (both plain syscalls, async-signal-safe)
    // on data prepared before the fork, and builds errors with
    // `io::Error::last_os_error`, which does not allocate.
    unsafe {
        command.pre_exec(in_child);
    }
    Ok(())
}

/// A CPU mask with one core set, for `sched_setaffinity`.
#[cfg(target_os = "linux")]
struct CpuSet(libc::cpu_set_t);

#[cfg(target_os = "linux")]
impl CpuSet {
    fn single(core: usize) -> io::Result<CpuSet> {
        // `CPU_SET` on an index past the mask would silently do nothing.
        if core >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {core} is past CPU_SETSIZE"),
            ));
        }
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `core` was checked to be inside the mask above.
        unsafe { libc::CPU_SET(core, &mut set) };
        Ok(CpuSet(set))
    }

    fn apply_to_current_process(&self) -> io::Result<()> {
        // SAFETY: pid 0 means the calling process; the pointer and size
        // describe a valid cpu_set_t owned by `self`.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
struct CpuSet;

#[cfg(not(target_os = "linux"))]
impl CpuSet {
    fn single(_core: usize) -> io::Result<CpuSet> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "pinning a server to a core needs sched_setaffinity (Linux only)",
        ))
    }

    fn apply_to_current_process(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening address as a client reaches it: every-address listeners
/// through loopback.
fn connectable(listening: SocketAddr) -> SocketAddr {
    match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], listening.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), listening.port())
        }
        _ => listening,
    }
}

/// `listening on 127.0.0.1:40123` → `127.0.0.1:40123`.
fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim_end()
        .strip_prefix(LISTENING_PREFIX)?
        .trim()
        .parse()
        .ok()
}

/// What the server printed, collected by the drainer threads.
#[derive(Debug, Default, Clone)]
struct Output {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

/// A poisoned lock only means a drainer thread panicked; the text is still good.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn drain_stdout(
    stdout: ChildStdout,
    output: Output,
    first_line: mpsc::Sender<String>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut first_line = Some(first_line);
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if let Some(sender) = first_line.take() {
                // The spawner may have given up waiting; that is fine.
                let _ = sender.send(line.clone());
            }
            lock(&output.stdout).push(line);
        }
    })
}

fn drain_stderr(mut stderr: ChildStderr, output: Output) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => lock(&output.stderr).push_str(&String::from_utf8_lossy(&chunk[..n])),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    })
}

/// How a server ended, returned by [`ServerProcess::shutdown`].
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// The exit status (a signal status if it had to be killed).
    pub status: ExitStatus,
    /// Every line the server printed on stdout, the `listening on` line first.
    pub stdout: Vec<String>,
    /// Everything the server printed on stderr.
    pub stderr: String,
    /// True if it ignored SIGINT for 10 s and was killed with SIGKILL.
    pub killed: bool,
}

impl Shutdown {
    /// The `summary: ...` line the contract asks for on SIGINT, if printed.
    pub fn summary_line(&self) -> Option<&str> {
        self.stdout
            .iter()
            .map(String::as_str)
            .find(|line| line.starts_with("summary:"))
    }
}

/// A running server binary; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Mutex<Child>,
    pid: u32,
    addr: SocketAddr,
    bin: PathBuf,
    output: Output,
    drainers: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Settings for starting `bin`; finish with [`ServerBuilder::spawn`].
    pub fn builder(bin: impl AsRef<Path>) -> ServerBuilder {
        ServerBuilder {
            bin: bin.as_ref().to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            args: Vec::new(),
            nofile_limit: None,
            cpu: None,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }

    /// Starts `bin --addr 127.0.0.1:0 ARGS...` and waits for it to listen.
    pub fn spawn<I, S>(bin: impl AsRef<Path>, args: I) -> io::Result<ServerProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        ServerProcess::builder(bin).args(args).spawn()
    }

    /// Where to connect: the address from the server's `listening on`
    /// line, or for a server listening on every address (`0.0.0.0`, `::`)
    /// the loopback address with its port.
    pub fn addr(&self) -> SocketAddr {
        connectable(self.addr)
    }

    /// The address exactly as the server's `listening on` line gave it.
    pub fn listening_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The binary this process runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        matches!(lock(&self.child).try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // Holding the lock while signalling: the child cannot be reaped (and
        // its pid reused) between the check and the kill.
        let mut child = lock(&self.child);
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "server {} already exited ({})",
                self.pid,
                describe(status)
            )));
        }
        let pid = libc::pid_t::try_from(self.pid).map_err(io::Error::other)?;
        // SAFETY: kill has no memory-safety preconditions; the pid belongs to
        // our unreaped child, so it cannot name another process.
        if unsafe { libc::kill(pid, signal) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Lines the server has printed on stdout so far (all of them, once it
    /// has exited).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.settle_output_if_exited();
        lock(&self.output.stdout).clone()
    }

    /// What the server has printed on stderr so far (all of it, once it has
    /// exited: its last words are often the reason it died).
    pub fn stderr(&self) -> String {
        self.settle_output_if_exited();
        lock(&self.output.stderr).clone()
    }

    /// After exit the pipes reach EOF soon: wait (briefly) for the drainers.
    fn settle_output_if_exited(&self) {
        if self.is_running() {
            return;
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.drainers.iter().any(|d| !d.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident memory (RSS) of the server's process tree, from
    /// `/proc/PID/statm`: the server and every process descended from it (a
    /// prefork server's workers hold the connections, not its supervisor).
    pub fn rss_bytes(&self) -> io::Result<u64> {
        proc::sum_over_tree(self.pid, proc::rss_bytes)
    }

    /// Open descriptors of the server's process tree, counted in
    /// `/proc/PID/fd` of each process.
    pub fn open_fds(&self) -> io::Result<usize> {
        proc::sum_over_tree(self.pid, proc::open_fds)
    }

    /// User plus system CPU time the server's process tree has used, from
    /// `/proc/PID/stat` of each live process (a prefork server's echo work is
    /// done in its workers).
    pub fn cpu_time(&self) -> io::Result<Duration> {
        proc::sum_over_tree(self.pid, proc::cpu_time)
    }

    /// Number of threads of the server's process tree, from the `Threads:`
    /// line of each `/proc/PID/status`.
    pub fn threads(&self) -> io::Result<usize> {
        proc::sum_over_tree(self.pid, proc::threads)
    }

    /// The server and every live process descended from it, the server first.
    pub fn process_tree(&self) -> Vec<u32> {
        process_tree(self.pid)
    }

    /// Sends SIGINT, waits up to 10 s for the server to exit (then SIGKILL,
    /// reported in [`Shutdown::killed`]) and returns what it printed.
    pub fn shutdown(mut self) -> io::Result<Shutdown> {
        // An already-exited server is not an error here: its status says why.
        if self.is_running() {
            self.signal(libc::SIGINT)?;
        }
        let mut killed = false;
        let status = match self.wait_for_exit(SHUTDOWN_TIMEOUT) {
            Some(status) => status,
            None => {
                killed = true;
                let mut child = lock(&self.child);
                child.kill()?;
                child.wait()?
            }
        };
        self.join_drainers();
        Ok(Shutdown {
            status,
            stdout: self.stdout_lines(),
            stderr: self.stderr(),
            killed,
        })
    }

    /// Polls for the child's exit for up to `timeout`.
    fn wait_for_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = lock(&self.child).try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (briefly) for the drainers to reach EOF so no output is lost.
    fn join_drainers(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.drainers.iter().any(|d| !d.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        for drainer in std::mem::take(&mut self.drainers) {
            if drainer.is_finished() {
                let _ = drainer.join();
            }
        }
    }

    /// Kills the server and builds the error `spawn` returns, with its stderr.
    fn startup_error(mut self, what: &str) -> io::Error {
        self.kill_if_running();
        self.join_drainers();
        let stderr = self.stderr();
        let stderr = if stderr.trim().is_empty() {
            "(stderr was empty)".to_owned()
        } else {
            format!("its stderr:\n{}", stderr.trim_end())
        };
        io::Error::other(format!("server {} {what}; {stderr}", self.bin.display()))
    }

    fn kill_if_running(&self) {
        let mut child = lock(&self.child);
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    /// No stray servers after a test, even one that panicked.
    fn drop(&mut self) {
        self.kill_if_running();
    }
}

/// `pid` and every live process descended from it, `pid` first (Linux;
/// elsewhere just `pid`).
pub fn process_tree(pid: u32) -> Vec<u32> {
    proc::process_tree(pid)
}

/// `exited with code 2` / `killed by signal 9`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Reading a process's resource use from `/proc/PID/...`.
#[cfg(target_os = "linux")]
mod proc {
    use std::fs;
    use std::io;
    use std::time::Duration;

    use crate::procstat::{Stat, ticks_per_second, ticks_to_duration};

    fn read(pid: u32, file: &str) -> io::Result<String> {
        let path = format!("/proc/{pid}/{file}");
        fs::read_to_string(&path)
            .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))
    }

    fn malformed(pid: u32, file: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected format in /proc/{pid}/{file}"),
        )
    }

    fn sysconf(name: libc::c_int) -> io::Result<u64> {
        // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
        let value = unsafe { libc::sysconf(name) };
        u64::try_from(value).map_err(|_| io::Error::last_os_error())
    }

    /// `pid` and all its live descendants, `pid` first, parents before
    /// children. Found from the parent pid (field 4) of every
    /// `/proc/*/stat`: `/proc/PID/task/TID/children` would be cheaper but
    /// needs CONFIG_PROC_CHILDREN, which many kernels leave out.
    pub fn process_tree(pid: u32) -> Vec<u32> {
        let mut parent_of: Vec<(u32, u32)> = Vec::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    continue;
                };
                // A process may exit while we look: skip what cannot be read.
                if let Some(stat) = read(child, "stat").ok().as_deref().and_then(Stat::parse) {
                    parent_of.push((child, stat.ppid));
                }
            }
        }
        let mut tree = vec![pid];
        let mut next = 0;
        while next < tree.len() {
            let parent = tree[next];
            tree.extend(
                parent_of
                    .iter()
                    .filter(|&&(child, p)| p == parent && child != pid)
                    .map(|&(child, _)| child),
            );
            next += 1;
        }
        tree
    }

    /// `measure` summed over `pid` and its descendants. An error for `pid`
    /// itself is returned (the server is gone); a descendant that exits
    /// between the listing and the reading simply no longer counts.
    pub fn sum_over_tree<T: std::iter::Sum<T>>(
        pid: u32,
        measure: fn(u32) -> io::Result<T>,
    ) -> io::Result<T> {
        let root = measure(pid)?;
        let descendants = process_tree(pid).into_iter().skip(1);
        Ok(std::iter::once(root)
            .chain(descendants.filter_map(|child| measure(child).ok()))
            .sum())
    }

    pub fn rss_bytes(pid: u32) -> io::Result<u64> {
        // statm: size resident shared text lib data dt, in pages.
        let statm = read(pid, "statm")?;
        let resident_pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
            .ok_or_else(|| malformed(pid, "statm"))?;
        Ok(resident_pages * sysconf(libc::_SC_PAGESIZE)?)
    }

    pub fn open_fds(pid: u32) -> io::Result<usize> {
        let path = format!("/proc/{pid}/fd");
        let entries = fs::read_dir(&path)
            .map_err(|err| io::Error::new(err.kind(), format!("{path}: {err}")))?;
        Ok(entries.filter(|entry| entry.is_ok()).count())
    }

    pub fn cpu_time(pid: u32) -> io::Result<Duration> {
        let stat = Stat::parse(&read(pid, "stat")?).ok_or_else(|| malformed(pid, "stat"))?;
        Ok(ticks_to_duration(stat.cpu_ticks(), ticks_per_second()))
    }

    pub fn threads(pid: u32) -> io::Result<usize> {
        read(pid, "status")?
            .lines()
            .find_map(|line| line.strip_prefix("Threads:"))
            .and_then(|count| count.trim().parse().ok())
            .ok_or_else(|| malformed(pid, "status"))
    }
}

#[cfg(not(target_os = "linux"))]
mod proc {
    use std::io;
    use std::time::Duration;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "process statistics are read from /proc (Linux only)",
        )
    }

    pub fn process_tree(pid: u32) -> Vec<u32> {
        vec![pid]
    }

    pub fn sum_over_tree<T>(pid: u32, measure: fn(u32) -> io::Result<T>) -> io::Result<T> {
        measure(pid)
    }

    pub fn rss_bytes(_pid: u32) -> io::Result<u64> {
        Err(unsupported())
    }

    pub fn open_fds(_pid: u32) -> io::Result<usize> {
        Err(unsupported())
    }

    pub fn cpu_time(_pid: u32) -> io::Result<Duration> {
        Err(unsupported())
    }

    pub fn threads(_pid: u32) -> io::Result<usize> {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:40123"),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert_eq!(
            parse_listening_line("listening on [::1]:7878\r"),
            "[::1]:7878".parse().ok()
        );
        assert_eq!(parse_listening_line("listening at 127.0.0.1:1"), None);
        assert_eq!(parse_listening_line("listening on localhost"), None);
    }

    #[test]
    fn a_server_on_every_address_is_reached_through_loopback() {
        let at = |s: &str| connectable(s.parse().unwrap()).to_string();
        assert_eq!(at("0.0.0.0:4000"), "127.0.0.1:4000");
        assert_eq!(at("[::]:4000"), "[::1]:4000");
        assert_eq!(at("127.0.0.2:4000"), "127.0.0.2:4000");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_its_own_process_statistics() {
        let me = std::process::id();
        assert!(proc::rss_bytes(me).unwrap() > 0);
        assert!(proc::open_fds(me).unwrap() >= 3);
        assert!(proc::threads(me).unwrap() >= 1);
        // Burn CPU until the tick counter shows some: on a busy host 30 ms
        // of wall time may not be a single tick of CPU time.
        let start = Instant::now();
        while proc::cpu_time(me).unwrap() == Duration::ZERO
            && start.elapsed() < Duration::from_secs(10)
        {
            std::hint::black_box(start.elapsed());
        }
        assert!(proc::cpu_time(me).unwrap() > Duration::ZERO);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn measures_cover_the_whole_process_tree() {
        // sh -> sleep: a parent with one child, like a supervisor and a worker.
        let mut parent = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = parent.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tree = proc::process_tree(pid);
        while tree.len() < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
            tree = proc::process_tree(pid);
        }
        assert_eq!(tree.len(), 2, "sh and its sleep: {tree:?}");
        assert_eq!(tree[0], pid);
        let alone = proc::open_fds(pid).unwrap();
        let both = proc::sum_over_tree(pid, proc::open_fds).unwrap();
        assert_eq!(both, alone + proc::open_fds(tree[1]).unwrap());
        assert_eq!(proc::sum_over_tree(pid, proc::threads).unwrap(), 2);
        assert!(proc::sum_over_tree(pid, proc::rss_bytes).unwrap() > proc::rss_bytes(pid).unwrap());
        // A process with no children measures exactly as before.
        let me = std::process::id();
        let childless = proc::process_tree(tree[1]);
        assert_eq!(childless, vec![tree[1]]);
        assert!(proc::process_tree(me).contains(&pid));
        for &member in tree.iter().rev() {
            // SAFETY: kill has no memory-safety preconditions; these pids are
            // our child and its child, alive until we reap them below.
            unsafe { libc::kill(member as libc::pid_t, libc::SIGKILL) };
        }
        parent.wait().unwrap();
    }
}
