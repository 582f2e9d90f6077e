//! The run itself, one function per phase: start the server, probe the
//! active connections with no idle ones, ramp the idle ones, measure while
//! they are held, probe again, tear down, wait for the host to give
//! everything back. Each phase fills its part of the [`Report`].

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use loadgen::report::{EchoReport, HoldReport};
use loadgen::server::ServerProcess;

use super::flamegraph::RampProfiler;
use super::host::{HostSnapshot, MemoryGuard, all_cores, cpu_between, cpu_ticks};
use super::others::{OtherProcess, ProcessTimes, describe, others_between};
use super::procs::{Helper, ServerGuard};
use super::ramp::{OpenCounter, RampProgress, server_said};
use super::ramp_profile::{HandshakeCounters, RampSample, phases};
use super::report::{
    KernelPerConn, PreTouch, Probe, Report, host_returned, median_probe, probe_line, targets,
    time_wait_drained,
};
use super::stall::{self, TcpStates};
use super::{
    Binaries, CLOSE_DEADLINE, LOADGEN_CORE, MillionArgs, PROBE_MESSAGE_BYTES, PROBE_SECONDS,
    PROBE_WARMUP_SECONDS, RAMP_STALL, SERVER_CORE, TIME_WAIT_DEADLINE, step,
};
use crate::run::TaskError;

// ANCHOR: measure
/// Runs every phase in order and returns what they measured.
pub(super) fn measure(
    args: &MillionArgs,
    hold_seconds: u64,
    binaries: &Binaries,
) -> Result<Report, TaskError> {
    let started = Instant::now();
    let mut run = Run {
        args,
        binaries,
        hold_seconds,
        guard: MemoryGuard::start((args.min_available_gib * f64::from(1u32 << 30)) as u64),
        report: Report {
            date_utc: crate::clock::now_utc(),
            conns: args.conns,
            active: args.active,
            server: relative_to_workspace(&binaries.server),
            server_procs: args.procs.clone(),
            pinned: args.pin,
            hold_seconds,
            host_baseline: HostSnapshot::take(),
            ..Report::default()
        },
    };
    let (server, metrics) = run.start_server()?;
    let counter = run.probe_without_idle(server.get()?, metrics)?;
    run.pre_touch()?;
    let (hold, held_at) = run.ramp(server.get()?, &counter)?;
    run.measure_held(server.get()?);
    let hold = run.probe_with_idle(server.get()?, hold, held_at)?;
    run.collect_hold(hold, held_at)?;
    run.close_all(server.get()?, &counter)?;
    run.stop_server(server)?;
    run.wait_for_the_host();
    Ok(run.finish(started))
}
// ANCHOR_END: measure

/// What every phase needs: the arguments, the binaries, the memory guard,
/// and the report it writes into.
struct Run<'a> {
    args: &'a MillionArgs,
    binaries: &'a Binaries,
    hold_seconds: u64,
    guard: MemoryGuard,
    report: Report,
}

impl Run<'_> {
    /// Starts the server with its metrics endpoint; returns it (killed with
    /// its workers if dropped) and where its metrics are served.
    fn start_server(&mut self) -> Result<(ServerGuard, Option<SocketAddr>), TaskError> {
        step("start the server");
        let args = self.args;
        let mut builder = ServerProcess::builder(&self.binaries.server).args([
            "--procs".to_string(),
            args.procs.clone(),
            "--conns".to_string(),
            (args.conns + args.active).to_string(),
            "--metrics".to_string(),
            "127.0.0.1:0".to_string(),
            "--status-every".to_string(),
            "0".to_string(),
        ]);
        if args.pin {
            builder = builder.cpu(SERVER_CORE);
        }
        if args.dests.is_some() {
            // Only with --netns: the namespace has nothing but loopback.
            builder = builder.listen(SocketAddr::from(([0, 0, 0, 0], 0)));
        }
        let server = ServerGuard(Some(builder.spawn().map_err(|e| {
            TaskError::Failed(format!("starting {}: {e}", self.binaries.server.display()))
        })?));
        let process = server.get()?;
        self.guard
            .server_pid
            .store(process.pid() as i32, Ordering::Relaxed);
        let addr = process.listening_addr();
        let metrics =
            server_said(process, "metrics on http://", Duration::from_secs(5)).and_then(|l| {
                l.trim_start_matches("metrics on http://")
                    .trim_end_matches("/metrics")
                    .parse::<SocketAddr>()
                    .ok()
            });
        self.report.server_plan = server_said(process, "prefork:", Duration::from_millis(100));
        // Wait for the workers to be up: their count settles within a second.
        thread::sleep(Duration::from_millis(500));
        self.report.server_processes = process.process_tree().len();
        eprintln!(
            "    listening on {addr}, {} process(es){}",
            self.report.server_processes,
            metrics.map_or(String::new(), |m| format!(", metrics on {m}"))
        );
        if let Some(plan) = &self.report.server_plan {
            eprintln!("    {plan}");
        }
        Ok((server, metrics))
    }

    /// The active probe with no idle connections, then the baseline the
    /// ramp is measured against. Returns how to count open connections.
    fn probe_without_idle(
        &mut self,
        server: &ServerProcess,
        metrics: Option<SocketAddr>,
    ) -> Result<OpenCounter, TaskError> {
        step(&format!(
            "{} active connections, no idle ones",
            self.args.active
        ));
        let (probes, others) = self.probe_phase(server, None)?;
        self.report.rtt_no_idle = median_probe(&probes);
        self.report.probes_no_idle = probes;
        self.report.others_during_probes_no_idle = others;
        let fds_before = server
            .open_fds()
            .map_err(|e| TaskError::Failed(format!("reading the server's descriptors: {e}")))?;
        self.report.server_memory.fds_before = fds_before;
        self.report.server_memory.rss_before_bytes = server.rss_bytes().unwrap_or(0);
        self.report.host_before_ramp = HostSnapshot::take();
        Ok(OpenCounter {
            metrics,
            fds_idle: fds_before,
        })
    }

    /// `--pre-touch`: writes to fresh memory and gives it back, so the pages
    /// the ramp's slabs take first are ones the host has just backed (freed
    /// pages go to the front of the kernel's free lists).
    fn pre_touch(&mut self) -> Result<(), TaskError> {
        let Some(gib) = self.args.pre_touch else {
            return Ok(());
        };
        step(&format!("write {gib} GiB of fresh memory and give it back"));
        let bytes = u64::from(gib) << 30;
        let available = HostSnapshot::take().mem_available;
        if bytes + (2 << 30) > available {
            return Err(TaskError::Usage(format!(
                "--pre-touch {gib} needs {gib} GiB and 2 GiB to spare, but MemAvailable is {:.1} \
                 GiB: give a smaller --pre-touch",
                available as f64 / f64::from(1u32 << 30)
            )));
        }
        let seconds = crate::first_touch::touch_fresh_pages(bytes as usize)
            .map_err(|e| TaskError::Failed(format!("--pre-touch: mapping {gib} GiB: {e}")))?;
        eprintln!(
            "    {gib} GiB in {seconds:.1} s ({:.1} GiB/s)",
            f64::from(gib) / seconds.max(0.001)
        );
        self.report.pre_touch = Some(PreTouch { gib, seconds });
        Ok(())
    }

    /// Starts `loadgen hold` and follows the server's open count until it
    /// holds every connection (or the ramp stalls). Returns the running
    /// hold and when the last connection arrived.
    fn ramp(
        &mut self,
        server: &ServerProcess,
        counter: &OpenCounter,
    ) -> Result<(Helper, Instant), TaskError> {
        let (args, n) = (self.args, self.args.conns);
        step(&format!("ramp {n} idle connections"));
        let mut command = Command::new(&self.binaries.loadgen);
        command.args([
            "hold".to_string(),
            format!("--addr={}", server.addr()),
            format!("--conns={n}"),
            format!("--hold={}", self.hold_seconds),
            "--ping-every=1".to_string(),
            "--ping-sample=10".to_string(),
            "--timeout=60".to_string(),
            "--verify-all".to_string(),
            "--procs=auto".to_string(),
            format!("--sources={}", args.sources),
            "--json".to_string(),
        ]);
        if let Some(rate) = args.rate {
            command.arg(format!("--rate={rate}"));
        }
        if let Some(m) = args.max_connecting {
            command.arg(format!("--max-connecting={m}"));
        }
        if let Some(dests) = args.dests {
            command.arg(format!("--dests={}", super::destinations(dests)));
        }
        if args.pin {
            command.arg(format!("--cpu={LOADGEN_CORE}"));
        }
        let mut flamegraph = RampProfiler::new(n, args.profile_from(), args.flamegraph_svg());
        flamegraph.start()?;
        let mut hold = Helper::spawn(&mut command, false)?;
        self.guard.watch(hold.group());
        let ramp_started = Instant::now();
        let cpu_at_start = cpu_ticks();
        let others_at_start = ProcessTimes::take();
        let handshakes_at_start = HandshakeCounters::read();
        let mut bar = RampProgress::new(n as u64);
        let (mut last_gain, mut last_open) = (Instant::now(), 0u64);
        loop {
            self.guard.check()?;
            let open = counter.open(server)?;
            let elapsed = ramp_started.elapsed().as_secs_f64();
            self.report.server_peak_open = self.report.server_peak_open.max(open);
            self.report.ramp_samples.push(RampSample::new(
                elapsed,
                open,
                all_cores(&cpu_ticks()),
                ProcessTimes::take().ticks_outside_the_run(),
            ));
            flamegraph.poll(open, n as u64);
            bar.show(open, elapsed, open as f64 / elapsed.max(0.001));
            if open >= n as u64 {
                break;
            }
            if open > last_open {
                (last_gain, last_open) = (Instant::now(), open);
            }
            if hold.has_exited() || last_gain.elapsed() >= RAMP_STALL {
                bar.finish();
                let said = hold.stderr_lines();
                let tail = said[said.len().saturating_sub(5)..].join("\n  ");
                let kernel = stall::describe(
                    &TcpStates::count(),
                    &handshakes_at_start.until(&HandshakeCounters::read()),
                );
                return Err(TaskError::Failed(format!(
                    "the ramp stopped at {open} of {n} open connections (loadgen {}):\n  \
                     {tail}\n  {kernel}",
                    if hold.has_exited() {
                        "exited"
                    } else {
                        "made no progress for 30 s"
                    }
                )));
            }
            thread::sleep(Duration::from_millis(250));
        }
        bar.finish();
        let report = &mut self.report;
        report.ramp_cpu = cpu_between(&cpu_at_start, &cpu_ticks());
        let held_at = Instant::now();
        report.server_saw_all_seconds = ramp_started.elapsed().as_secs_f64();
        report.others_during_ramp = others_between(
            &others_at_start,
            &ProcessTimes::take(),
            report.server_saw_all_seconds,
        );
        report.ramp_phases = phases(&report.ramp_samples, n as u64);
        report.ramp_handshakes = handshakes_at_start.until(&HandshakeCounters::read());
        report.flamegraph = flamegraph.finish(&run_threads(server))?;
        if let Some(profile) = &mut report.flamegraph {
            profile.settings = args.ramp_settings();
        }
        report.loadgen_plan = hold
            .stderr_lines()
            .into_iter()
            .find(|l| l.starts_with("loadgen: ") && l.contains(" connections over "));
        eprintln!(
            "    the server counts {n} open after {:.1} s",
            report.server_saw_all_seconds
        );
        for core in &report.ramp_cpu {
            eprintln!(
                "    {:>4} during the ramp: user {:.0}%, system {:.0}%, softirq {:.0}%, idle {:.0}%",
                core.core, core.user, core.system, core.softirq, core.idle
            );
        }
        eprintln!(
            "    other processes during the ramp (of one core): {}",
            describe(&report.others_during_ramp)
        );
        Ok((hold, held_at))
    }

    /// Memory while every connection is held: the server's, and the
    /// kernel's per connection.
    fn measure_held(&mut self, server: &ServerProcess) {
        step("measure while held");
        let n = self.args.conns;
        let report = &mut self.report;
        report.server_memory.rss_held_bytes = server.rss_bytes().unwrap_or(0);
        report.host_held = HostSnapshot::take();
        let growth = report
            .server_memory
            .rss_held_bytes
            .saturating_sub(report.server_memory.rss_before_bytes);
        report.server_memory.rss_per_conn_bytes = growth as f64 / n as f64;
        let (before, held) = (&report.host_before_ramp, &report.host_held);
        let per_conn = |a: u64, b: u64| b as f64 / n as f64 - a as f64 / n as f64;
        report.kernel_per_conn = KernelPerConn {
            slab_bytes: per_conn(before.slab, held.slab),
            slab_unreclaimable_bytes: per_conn(before.slab_unreclaimable, held.slab_unreclaimable),
            mem_available_drop_bytes: per_conn(held.mem_available, before.mem_available),
        };
        eprintln!(
            "    server RSS {} -> {} MiB: {:.1} B per connection; kernel Slab +{:.0} B, \
             SUnreclaim +{:.0} B per connection (both ends); sockstat TCP inuse {} mem {} pages",
            report.server_memory.rss_before_bytes >> 20,
            report.server_memory.rss_held_bytes >> 20,
            report.server_memory.rss_per_conn_bytes,
            report.kernel_per_conn.slab_bytes,
            report.kernel_per_conn.slab_unreclaimable_bytes,
            report.host_held.tcp_inuse,
            report.host_held.tcp_mem_pages
        );
    }

    /// Waits for loadgen's verify pass (it pings every connection in the
    /// hold's first three quarters), then runs the active probe with the
    /// idle connections held.
    fn probe_with_idle(
        &mut self,
        server: &ServerProcess,
        mut hold: Helper,
        held_at: Instant,
    ) -> Result<Helper, TaskError> {
        let verify_done = held_at + Duration::from_secs_f64(self.hold_seconds as f64 * 0.75 + 2.0);
        eprintln!(
            "    waiting {:.0} s for loadgen to verify every connection",
            verify_done
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
        while Instant::now() < verify_done && !hold.has_exited() {
            self.guard.check()?;
            thread::sleep(Duration::from_millis(250));
        }
        step(&format!(
            "{} active connections with {} idle ones held",
            self.args.active, self.args.conns
        ));
        let (probes, others) = self.probe_phase(server, Some(&mut hold))?;
        self.report.rtt_with_idle = median_probe(&probes);
        self.report.probes_with_idle = probes;
        self.report.others_during_probes_with_idle = others;
        Ok(hold)
    }

    /// `--probes` active probes in a row, each printed, with a pause after
    /// each for its connections to close. With `hold`, each must start and
    /// end while loadgen still holds the idle connections. Also returns
    /// the processes outside the run that were busy meanwhile.
    fn probe_phase(
        &mut self,
        server: &ServerProcess,
        mut hold: Option<&mut Helper>,
    ) -> Result<(Vec<Probe>, Vec<OtherProcess>), TaskError> {
        let (started, others_at_start) = (Instant::now(), ProcessTimes::take());
        let held_through = |hold: &mut Option<&mut Helper>, when: &str| {
            if hold.as_mut().is_some_and(|h| h.has_exited()) {
                return Err(TaskError::Failed(format!(
                    "loadgen's hold ended {when} an active probe; give a longer --hold"
                )));
            }
            Ok(())
        };
        let mut probes = Vec::new();
        for k in 1..=self.args.probes {
            held_through(&mut hold, "before")?;
            let probe = self.active_probe(server)?;
            held_through(&mut hold, "during")?;
            eprintln!("    probe {k}: {}", probe_line(&probe));
            probes.push(probe);
            thread::sleep(Duration::from_secs(1));
        }
        let others = others_between(
            &others_at_start,
            &ProcessTimes::take(),
            started.elapsed().as_secs_f64(),
        );
        eprintln!(
            "    other processes during the probes (of one core): {}",
            describe(&others)
        );
        Ok((probes, others))
    }

    /// Waits for `loadgen hold` to end and takes its report.
    fn collect_hold(&mut self, hold: Helper, held_at: Instant) -> Result<(), TaskError> {
        step("tear down");
        let group = hold.group();
        let deadline = held_at + Duration::from_secs(self.hold_seconds + 120);
        let text = hold.finish("loadgen hold", deadline);
        self.guard.unwatch(group);
        let text = text?;
        let hold: HoldReport = serde_json::from_str(text.trim())
            .map_err(|e| TaskError::Failed(format!("loadgen hold gave no report ({e}): {text}")))?;
        let report = &mut self.report;
        report.established = hold.connect.established;
        report.establish_seconds = hold.connect.seconds;
        report.loadgen_processes = hold.processes;
        report.connections_answered = hold.connections_answered;
        report.connections_lost = hold.connections_lost;
        report.hold_errors = hold.errors.clone();
        report.hold_ok = hold.ok;
        Ok(())
    }

    /// Waits until the server counts no open connection, then reads what it
    /// still holds.
    fn close_all(
        &mut self,
        server: &ServerProcess,
        counter: &OpenCounter,
    ) -> Result<(), TaskError> {
        let closing = Instant::now();
        while counter.open(server)? > 0 {
            if closing.elapsed() >= CLOSE_DEADLINE {
                return Err(TaskError::Failed(format!(
                    "the server still counts {} open connections {} s after loadgen exited",
                    counter.open(server)?,
                    CLOSE_DEADLINE.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
        let report = &mut self.report;
        report.teardown.close_seconds = closing.elapsed().as_secs_f64();
        // The metric drops as connections close; the last descriptors and
        // tables go a moment later.
        thread::sleep(Duration::from_secs(1));
        report.server_memory.fds_after_close = server.open_fds().unwrap_or(usize::MAX);
        report.server_memory.rss_after_close_bytes = server.rss_bytes().unwrap_or(u64::MAX);
        report.host_after_close = HostSnapshot::take();
        eprintln!(
            "    all closed {:.1} s after loadgen exited; server fds {} (before the ramp {}), \
             RSS {:.1} MiB (before {:.1})",
            report.teardown.close_seconds,
            report.server_memory.fds_after_close,
            report.server_memory.fds_before,
            report.server_memory.rss_after_close_bytes as f64 / 1048576.0,
            report.server_memory.rss_before_bytes as f64 / 1048576.0
        );
        Ok(())
    }

    /// SIGINT to the server; its exit and summary line.
    fn stop_server(&mut self, mut server: ServerGuard) -> Result<(), TaskError> {
        let Some(process) = server.0.take() else {
            return Err(TaskError::Failed("the server is gone".to_string()));
        };
        self.guard.server_pid.store(0, Ordering::Relaxed);
        let shutdown = process
            .shutdown()
            .map_err(|e| TaskError::Failed(format!("shutting the server down: {e}")))?;
        let teardown = &mut self.report.teardown;
        teardown.server_exit = loadgen::server::describe(shutdown.status);
        teardown.server_killed = shutdown.killed;
        teardown.summary = shutdown.summary_line().map(str::to_string);
        eprintln!(
            "    server: {} ({})",
            teardown.summary.as_deref().unwrap_or("no summary line"),
            teardown.server_exit
        );
        Ok(())
    }

    /// The client ends closed first, so ~1M of them sit in TIME_WAIT for
    /// 60 s by TCP's design (up to `tcp_max_tw_buckets`), each holding
    /// kernel slab. Wait them out before judging kernel memory, so the
    /// check finds leaks rather than TIME_WAIT.
    fn wait_for_the_host(&mut self) {
        let exited = Instant::now();
        eprintln!(
            "    waiting up to {} s for the host to give back descriptors and memory \
             ({} client sockets in TIME_WAIT, which lasts 60 s; baseline {})",
            TIME_WAIT_DEADLINE.as_secs(),
            HostSnapshot::take().tcp_tw,
            self.report.host_baseline.tcp_tw
        );
        loop {
            self.report.host_after_exit = HostSnapshot::take();
            if (host_returned(&self.report) && time_wait_drained(&self.report))
                || exited.elapsed() >= TIME_WAIT_DEADLINE
            {
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        self.report.teardown.return_seconds = exited.elapsed().as_secs_f64();
    }

    /// The derived figures and the verdict.
    fn finish(mut self, started: Instant) -> Report {
        let report = &mut self.report;
        report.lowest_mem_available = self.guard.lowest();
        report.p99_ratio = match (&report.rtt_no_idle, &report.rtt_with_idle) {
            (Some(none), Some(idle)) if none.rtt_us.p99_us > 0 => {
                Some(idle.rtt_us.p99_us as f64 / none.rtt_us.p99_us as f64)
            }
            _ => None,
        };
        report.targets = targets(report);
        report.total_seconds = started.elapsed().as_secs_f64();
        self.report
    }

    /// The active probe: ACTIVE connections in a closed echo loop (64-byte
    /// messages, each verified), 1 s warm-up, 5 s measured, with the CPU
    /// the server's processes and loadgen took meanwhile.
    fn active_probe(&self, server: &ServerProcess) -> Result<Probe, TaskError> {
        let mut command = Command::new(&self.binaries.loadgen);
        command.args([
            "echo".to_string(),
            format!("--addr={}", server.addr()),
            format!("--server-pid={}", server.pid()),
            format!("--conns={}", self.args.active),
            format!("--size={PROBE_MESSAGE_BYTES}"),
            format!("--warmup={PROBE_WARMUP_SECONDS}"),
            format!("--duration={PROBE_SECONDS}"),
            "--timeout=10".to_string(),
            "--json".to_string(),
        ]);
        if self.args.pin {
            command.arg(format!("--cpu={LOADGEN_CORE}"));
        }
        let helper = Helper::spawn(&mut command, false)?;
        let group = helper.group();
        self.guard.watch(group);
        let deadline =
            Instant::now() + Duration::from_secs(PROBE_WARMUP_SECONDS + PROBE_SECONDS + 60);
        let text = helper.finish("the active probe", deadline);
        self.guard.unwatch(group);
        let text = text?;
        self.guard.check()?;
        let report: EchoReport = serde_json::from_str(text.trim()).map_err(|e| {
            TaskError::Failed(format!("the active probe gave no report ({e}): {text}"))
        })?;
        Ok(Probe {
            connections: report.connect.established,
            messages_per_sec: report.messages_per_sec,
            rtt_us: report.rtt_us,
            ok: report.ok,
            server_us_per_message: report.cpu.server.and_then(|cpu| cpu.us_per_message),
            client_us_per_message: report.cpu.loadgen.us_per_message,
        })
    }
}

/// The thread names (perf's `comm`) of this run's processes: the server's
/// tree and loadgen's.
fn run_threads(server: &ServerProcess) -> Vec<String> {
    let mut names = vec!["loadgen".to_string()];
    for pid in server.process_tree() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                let comm = comm.trim().to_string();
                if !names.contains(&comm) {
                    names.push(comm);
                }
            }
        }
    }
    names
}

/// The server binary as the report records it: relative to the workspace
/// when it lies inside it, so a recorded run carries no machine's paths.
fn relative_to_workspace(path: &std::path::Path) -> String {
    let root = crate::run::workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}
