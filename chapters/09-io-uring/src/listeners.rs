//! Where the reactors listen and where they run: their listening sockets
//! and their CPUs (`--pin`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::sys::{self, Listener};

/// Listen queue length per listener; the kernel silently caps it at
/// net.core.somaxconn. A million clients connecting at once need it long.
const LISTEN_BACKLOG: i32 = 65535;

// ANCHOR: listeners
// ANCHOR: bind_listeners_signature
/// The listening sockets, one per reactor: with `SO_REUSEPORT` each reactor
/// gets its own, all bound to one port: port 0 picks a free port for the
/// first, and the others must bind *that* port (binding 0 again would give
/// each a port of its own). Each reactor's ring arms one multishot accept on
/// its own listener (chapter 09 has no `--balance exclusive`: that was an
/// epoll flag). In a worker process the supervisor holds the port with
/// `SO_REUSEPORT` too: every member of the port's group must have it.
pub fn bind_listeners(addr: SocketAddr, reactors: usize) -> io::Result<Vec<Arc<Listener>>> {
    // ANCHOR_END: bind_listeners_signature
    let mut listeners = Vec::with_capacity(reactors);
    let mut addr = addr;
    for _ in 0..reactors {
        let listener = Listener::bind(addr, LISTEN_BACKLOG, true)?;
        addr = listener.local_addr()?;
        listeners.push(Arc::new(listener));
    }
    Ok(listeners)
}
// ANCHOR_END: listeners

// ANCHOR: plan_pinning
// ANCHOR: plan_pinning_signature
/// The CPU for each reactor with `--pin` (reactor i, counted from `first`
/// over all workers, gets the i-th CPU we are allowed to use, round robin), or no pinning.
pub fn plan_pinning(reactors: usize, pin: bool, first: usize) -> io::Result<Vec<Option<usize>>> {
    // ANCHOR_END: plan_pinning_signature
    if !pin {
        return Ok(vec![None; reactors]);
    }
    let allowed = sys::allowed_cpus()?;
    if allowed.is_empty() {
        return Err(io::Error::other("the affinity mask is empty"));
    }
    Ok((first..first + reactors)
        .map(|i| Some(allowed[i % allowed.len()]))
        .collect())
}
// ANCHOR_END: plan_pinning
