//! The ramp profile: how many connections were open at each moment of the
//! ramp, how fast they arrived, and where the CPU time went in each quarter
//! of it, so a ramp that slows down as the host fills up shows *where* it
//! slows down, and whether the time went to the kernel (system, softirq) or
//! to our own code (user).

use loadgen::cpu::CoreTicks;
use serde::{Deserialize, Serialize};

/// One look at the ramp: seconds since loadgen started, connections the
/// server counted open, and the host's cumulative CPU ticks (all cores,
/// `/proc/stat`'s `cpu` line) at that moment, with the ticks processes
/// outside the run had used by then (see [`super::others`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct RampSample {
    pub(super) seconds: f64,
    pub(super) open: u64,
    pub(super) user: u64,
    pub(super) system: u64,
    pub(super) softirq: u64,
    pub(super) idle: u64,
    pub(super) total: u64,
    #[serde(default)]
    pub(super) others: u64,
}

impl RampSample {
    pub(super) fn new(seconds: f64, open: u64, ticks: CoreTicks, others: u64) -> RampSample {
        RampSample {
            seconds,
            open,
            user: ticks.user,
            system: ticks.system,
            softirq: ticks.softirq,
            idle: ticks.idle,
            total: ticks.total,
            others,
        }
    }
}

/// One stretch of the ramp (a quarter of the connections): how long it
/// took, the rate, and the host's CPU split over it, in percent of all
/// cores; `others` is the part of it processes outside the run took.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct RampPhase {
    pub(super) from_open: u64,
    pub(super) to_open: u64,
    pub(super) seconds: f64,
    pub(super) conns_per_sec: f64,
    pub(super) user: f64,
    pub(super) system: f64,
    pub(super) softirq: f64,
    pub(super) idle: f64,
    /// None for a run recorded before this was measured.
    #[serde(default)]
    pub(super) others: Option<f64>,
}

/// The ramp split into this many phases of equal connection counts.
pub(super) const PHASES: u64 = 4;

/// The phases of a ramp: from the first sample at or past each quarter of
/// `total` to the first at or past the next (the first phase starts at the
/// first sample). Empty when the samples are too few to tell.
pub(super) fn phases(samples: &[RampSample], total: u64) -> Vec<RampPhase> {
    let Some(first) = samples.first() else {
        return Vec::new();
    };
    let at_or_past = |open: u64| samples.iter().find(|s| s.open >= open);
    let mut bounds = vec![*first];
    for quarter in 1..=PHASES {
        match at_or_past(total * quarter / PHASES) {
            Some(s) => bounds.push(*s),
            None => break,
        }
    }
    bounds
        .windows(2)
        .filter(|w| w[1].seconds > w[0].seconds)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let ticks = b.total.saturating_sub(a.total).max(1) as f64;
            let share = |x: u64, y: u64| 100.0 * y.saturating_sub(x) as f64 / ticks;
            let seconds = b.seconds - a.seconds;
            RampPhase {
                from_open: a.open,
                to_open: b.open,
                seconds,
                conns_per_sec: b.open.saturating_sub(a.open) as f64 / seconds,
                user: share(a.user, b.user),
                system: share(a.system, b.system),
                softirq: share(a.softirq, b.softirq),
                idle: share(a.idle, b.idle),
                others: (b.others > 0).then(|| share(a.others, b.others)),
            }
        })
        .collect()
}

/// Connections per second over the ramp, each point the rate over the
/// last `window` seconds of samples, so the plot's line is not the jitter
/// of a 250 ms poll.
pub(super) fn rates(samples: &[RampSample], window: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, s) in samples.iter().enumerate() {
        while samples[start].seconds < s.seconds - window {
            start += 1;
        }
        let a = &samples[start];
        if i > start && s.seconds > a.seconds {
            out.push((
                s.seconds,
                s.open.saturating_sub(a.open) as f64 / (s.seconds - a.seconds),
            ));
        }
    }
    out
}

/// TCP's own counters of what went wrong in a handshake (`/proc/net/netstat`,
/// TcpExt), host-wide: a SYN or final ACK the listener dropped because its
/// accept queue was full is retried by the client only after a second (then
/// 3 s, 7 s, …), which no amount of CPU wins back.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct HandshakeCounters {
    /// Accept queue full when a handshake completed (`ListenOverflows`).
    pub(super) listen_overflows: u64,
    /// SYNs and ACKs a listener dropped, overflows included (`ListenDrops`).
    pub(super) listen_drops: u64,
    /// SYNs sent again after no answer (`TCPSynRetrans`).
    pub(super) syn_retransmits: u64,
    /// SYN queue full: answered with a cookie (`TCPReqQFullDoCookies`).
    pub(super) syn_queue_full_cookies: u64,
}

impl HandshakeCounters {
    pub(super) fn read() -> HandshakeCounters {
        let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
        HandshakeCounters::parse(&text)
    }

    /// The TcpExt lines: one of names, then one of values.
    fn parse(netstat: &str) -> HandshakeCounters {
        let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return HandshakeCounters::default();
        };
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find_map(|(n, v)| (n == name).then(|| v.parse().ok())?)
                .unwrap_or(0)
        };
        HandshakeCounters {
            listen_overflows: get("ListenOverflows"),
            listen_drops: get("ListenDrops"),
            syn_retransmits: get("TCPSynRetrans"),
            syn_queue_full_cookies: get("TCPReqQFullDoCookies"),
        }
    }

    /// What happened between `self` (before) and `after`.
    pub(super) fn until(&self, after: &HandshakeCounters) -> HandshakeCounters {
        HandshakeCounters {
            listen_overflows: after.listen_overflows.saturating_sub(self.listen_overflows),
            listen_drops: after.listen_drops.saturating_sub(self.listen_drops),
            syn_retransmits: after.syn_retransmits.saturating_sub(self.syn_retransmits),
            syn_queue_full_cookies: after
                .syn_queue_full_cookies
                .saturating_sub(self.syn_queue_full_cookies),
        }
    }
}

/// The ramp as an SVG: connections open against seconds, and the rate.
pub(super) fn plot(samples: &[RampSample], caption: &str) -> Result<String, String> {
    let open: Vec<(f64, f64)> = samples.iter().map(|s| (s.seconds, s.open as f64)).collect();
    crate::results::plot::ramp(&open, &rates(samples, 1.0), caption)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, open: u64, busy: u64) -> RampSample {
        // 100 ticks per second across the host; `busy` of them in system.
        let total = (seconds * 100.0) as u64;
        RampSample {
            seconds,
            open,
            system: busy,
            idle: total - busy,
            total,
            ..RampSample::default()
        }
    }

    #[test]
    fn a_ramp_that_slows_shows_it_in_its_phases() {
        // 400 connections: the first half in 1 s each, the second in 3 s each.
        let samples = [
            sample(0.0, 0, 0),
            sample(1.0, 100, 90),
            sample(2.0, 200, 180),
            sample(5.0, 300, 480),
            sample(8.0, 400, 780),
        ];
        let phases = phases(&samples, 400);
        assert_eq!(phases.len(), 4);
        assert!((phases[0].conns_per_sec - 100.0).abs() < 1e-9);
        assert!((phases[3].conns_per_sec - 100.0 / 3.0).abs() < 1e-9);
        assert!((phases[0].system - 90.0).abs() < 1e-9);
        assert!((phases[3].system - 100.0).abs() < 1e-9);
        assert!((phases[3].idle - 0.0).abs() < 1e-9);
        assert_eq!(phases[3].others, None, "not measured: not shown as zero");
    }

    #[test]
    fn the_share_processes_outside_the_run_took_is_kept_per_phase() {
        let with_others = |seconds: f64, open: u64, others: u64| RampSample {
            others,
            ..sample(seconds, open, 0)
        };
        let samples = [
            with_others(0.0, 0, 1),
            with_others(1.0, 50, 11),
            with_others(2.0, 100, 51),
        ];
        let phases = phases(&samples, 100);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].others, Some(10.0));
        assert_eq!(phases[1].others, Some(40.0));
    }

    #[test]
    fn an_unfinished_ramp_has_only_the_phases_it_reached() {
        let samples = [sample(0.0, 0, 0), sample(1.0, 150, 50)];
        assert_eq!(phases(&samples, 400).len(), 1);
        assert!(phases(&[], 400).is_empty());
    }

    #[test]
    fn handshake_counters_come_from_the_tcpext_lines() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 1 20 25 30\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let before = HandshakeCounters::parse(text);
        assert_eq!(before.listen_overflows, 20);
        assert_eq!(before.syn_retransmits, 30);
        assert_eq!(before.syn_queue_full_cookies, 0);
        let after = HandshakeCounters {
            listen_overflows: 25,
            ..before
        };
        assert_eq!(before.until(&after).listen_overflows, 5);
        assert_eq!(before.until(&after).listen_drops, 0);
    }

    #[test]
    fn rates_are_taken_over_the_window() {
        let samples = [
            sample(0.0, 0, 0),
            sample(0.5, 50, 0),
            sample(1.0, 100, 0),
            sample(1.5, 100, 0),
            sample(2.0, 100, 0),
        ];
        let rates = rates(&samples, 1.0);
        assert_eq!(rates.first(), Some(&(0.5, 100.0)));
        assert_eq!(rates.last(), Some(&(2.0, 0.0)));
    }
}
