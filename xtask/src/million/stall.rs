//! What a stalled ramp looks like from the kernel's side, said in the
//! error, so a stall that does not come back can still be read.
//!
//! The ramp waits for the *server* to count every connection. When it stops
//! short, the missing connections are somewhere between loadgen's `connect`
//! and the server's `accept`: SYNs unanswered (`SYN-SENT`), handshakes
//! half-done (`SYN-RECV`), or finished and waiting in a listener's accept
//! queue that nobody drains. `/proc/net/tcp` has all three: each socket's
//! state, and for a listener its accept queue in the `rx_queue` column.

use std::fs::File;
use std::io::{BufRead, BufReader};

use super::ramp_profile::HandshakeCounters;

/// Sockets by the states a connection passes through on its way in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcpStates {
    pub(super) established: u64,
    pub(super) syn_sent: u64,
    pub(super) syn_recv: u64,
    pub(super) listening: u64,
    /// Connections finished and queued on listeners, not yet accepted.
    pub(super) accept_queued: u64,
}

impl TcpStates {
    /// Counts this network namespace's TCP sockets (IPv4 and IPv6),
    /// reading line by line: beside a million connections the files are
    /// hundreds of megabytes.
    pub(super) fn count() -> TcpStates {
        let mut states = TcpStates::default();
        for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(file) = File::open(path) else { continue };
            for line in BufReader::new(file).lines().skip(1).map_while(Result::ok) {
                states.add(&line);
            }
        }
        states
    }

    /// One line: `sl local rem st tx_queue:rx_queue …`, state in hex
    /// (01 established, 02 SYN-SENT, 03 SYN-RECV, 0A listen).
    fn add(&mut self, line: &str) {
        let mut fields = line.split_whitespace().skip(3);
        let (Some(state), Some(queues)) = (fields.next(), fields.next()) else {
            return;
        };
        match state {
            "01" => self.established += 1,
            "02" => self.syn_sent += 1,
            "03" => self.syn_recv += 1,
            "0A" => {
                self.listening += 1;
                let rx = queues.split(':').nth(1).unwrap_or("0");
                self.accept_queued += u64::from_str_radix(rx, 16).unwrap_or(0);
            }
            _ => {}
        }
    }
}

/// The paragraph a stalled ramp's error ends with.
pub(super) fn describe(states: &TcpStates, handshakes: &HandshakeCounters) -> String {
    format!(
        "sockets now: {} established, {} SYN-SENT (SYNs unanswered), {} SYN-RECV \
         (handshakes half-done), {} queued on {} listeners for accept; since the ramp \
         began: {} accept-queue overflows, {} listener drops, {} SYNs sent again",
        states.established,
        states.syn_sent,
        states.syn_recv,
        states.accept_queued,
        states.listening,
        handshakes.listen_overflows,
        handshakes.listen_drops,
        handshakes.syn_retransmits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_accept_queues_are_read_from_the_tcp_table() {
        let lines = [
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000026 00:00000000 00000000     0        0 1",
            "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2",
            "   2: 0200007F:C350 0100007F:1F90 02 00000001:00000000 01:00000100 00000002     0        0 0",
            "   3: 0100007F:1F90 0200007F:C351 03 00000000:00000000 01:00000100 00000002     0        0 0",
            "   4: 0100007F:1F90 0200007F:C352 01 00000000:00000000 00:00000000 00000000     0        0 3",
            "   5: 0200007F:C352 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4",
            "   6: truncated",
        ];
        let mut states = TcpStates::default();
        for line in lines {
            states.add(line);
        }
        assert_eq!(
            states,
            TcpStates {
                established: 2,
                syn_sent: 1,
                syn_recv: 1,
                listening: 2,
                accept_queued: 0x26,
            }
        );
        let said = describe(&states, &HandshakeCounters::default());
        assert!(said.contains("1 SYN-SENT"), "{said}");
        assert!(said.contains("38 queued on 2 listeners"), "{said}");
    }

    /// The kernel's own table, not a fixture: a listener nobody accepts
    /// from, with connections finished and waiting, is the heart of a
    /// stalled ramp. Other tests may hold sockets meanwhile, so only lower
    /// bounds are asserted.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_listener_nobody_accepts_from_shows_its_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let waiting: Vec<_> = (0..5)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let states = TcpStates::count();
        assert!(states.listening >= 1, "{states:?}");
        assert!(states.accept_queued >= 5, "{states:?}");
        // Both ends of each waiting connection are established.
        assert!(states.established >= 10, "{states:?}");
        drop(waiting);
    }
}
