//! Many reactors, one per core: starting them (each pinned first, if asked),
//! telling them to stop, and waiting for them. As in chapter 08 this runs
//! inside each worker process, and what the reactors did is in shared memory.
//!
//! Nothing is shared between reactors while they run: each has its own
//! `SO_REUSEPORT` listener, ring, buffer ring, slab, worker pool and timer
//! wheel. Main's only links to them are a "stop" eventfd each, one
//! "a reactor died" eventfd, and the join handles.

use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::server::{Config, Server};
use crate::stats::ReactorStats;
use crate::sys::{self, EventFd, Listener};

/// What main knows about a running reactor, for the start-up lines.
#[derive(Clone, Copy, Debug)]
pub struct ReactorInfo {
    pub index: usize,
    /// The kernel's id for its thread: `/proc/<pid>/task/<thread_id>/`.
    pub thread_id: i32,
    /// The CPU it is pinned to, if `--pin`.
    pub cpu: Option<usize>,
}

// ANCHOR: reactors
pub struct Reactors {
    infos: Vec<ReactorInfo>,
    stops: Vec<Arc<EventFd>>,
    handles: Vec<JoinHandle<io::Result<()>>>,
    /// Notified by a reactor whose loop failed, so main stops the rest.
    died: Arc<EventFd>,
}

impl Reactors {
    /// Starts one reactor per listener (`listeners[i]` for reactor `i`),
    /// reactor `i` pinned to
    /// `cpus[i]` if given, counting into `stats[i]`. Returns once every
    /// reactor is ready to serve, or the first error (after stopping the
    /// ones that did start).
    pub fn start(
        listeners: Vec<Arc<Listener>>,
        cpus: &[Option<usize>],
        config: Config,
        stats: &'static [ReactorStats],
    ) -> io::Result<Reactors> {
        if listeners.len() > stats.len() {
            return Err(io::Error::other("more reactors than stats slots"));
        }
        let died = Arc::new(EventFd::new()?);
        let mut reactors = Reactors {
            infos: Vec::new(),
            stops: Vec::new(),
            handles: Vec::new(),
            died: Arc::clone(&died),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        for (index, listener) in listeners.into_iter().enumerate() {
            let slot = &stats[index];
            let cpu = cpus.get(index).copied().flatten();
            let stop = Arc::new(EventFd::new()?);
            let ready_tx = ready_tx.clone();
            let died = Arc::clone(&died);
            let thread_stop = Arc::clone(&stop);
            let handle = thread::Builder::new()
                .name(format!("reactor-{index}"))
                .spawn(move || {
                    // A panic must stop the process's reactors as a failed
                    // loop does, not leave them serving one short.
                    let _on_panic = NotifyOnPanic(Arc::clone(&died));
                    // Pin first: the worker threads `Server::new` starts
                    // inherit this thread's affinity.
                    let setup = cpu
                        .map_or(Ok(()), sys::pin_current_thread)
                        .and_then(|()| Server::new(listener, thread_stop, config, slot));
                    let server = match setup {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return Err(io::Error::other("did not start"));
                        }
                    };
                    let thread_id = sys::thread_id();
                    let _ = ready_tx.send(Ok(ReactorInfo {
                        index,
                        thread_id,
                        cpu,
                    }));
                    let result = server.run();
                    if let Err(e) = &result {
                        eprintln!("reactor {index}: event loop failed: {e}");
                        let _ = died.notify();
                    }
                    result
                })?;
            reactors.stops.push(stop);
            reactors.handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..reactors.handles.len() {
            match ready_rx.recv() {
                Ok(Ok(info)) => reactors.infos.push(info),
                Ok(Err(e)) => {
                    reactors.stop();
                    let _ = reactors.join();
                    return Err(e);
                }
                Err(_) => {
                    reactors.stop();
                    let _ = reactors.join();
                    return Err(io::Error::other("a reactor thread exited while starting"));
                }
            }
        }
        reactors.infos.sort_by_key(|info| info.index);
        Ok(reactors)
    }

    pub fn infos(&self) -> &[ReactorInfo] {
        &self.infos
    }

    /// Readable once a reactor's loop has failed.
    pub fn died_fd(&self) -> std::os::fd::RawFd {
        self.died.raw_fd()
    }

    /// Tells every reactor to stop (they finish their current turn first).
    pub fn stop(&self) {
        for stop in &self.stops {
            let _ = stop.notify();
        }
    }

    /// Waits for every reactor to stop; the first error, if any.
    pub fn join(self) -> io::Result<()> {
        let mut first_error = None;
        for handle in self.handles {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(io::Error::other("a reactor thread panicked"));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
// ANCHOR_END: reactors

/// Notifies "a reactor died" if its thread unwinds from a panic: `main`
/// then stops the other reactors and exits with an error (in chapter 08 the
/// supervisor restarts the worker), instead of running on with one fewer.
struct NotifyOnPanic(Arc<EventFd>);

impl Drop for NotifyOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("reactor thread panicked; stopping");
            let _ = self.0.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the eventfd has been notified (without consuming it).
    fn notified(fd: &EventFd) -> bool {
        let mut pollfd = libc::pollfd {
            fd: fd.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, its count passed; timeout 0 only looks.
        unsafe { libc::poll(&raw mut pollfd, 1, 0) == 1 }
    }

    #[test]
    fn a_panicking_reactor_thread_says_it_died() {
        let died = Arc::new(EventFd::new().unwrap());
        let guard = NotifyOnPanic(Arc::clone(&died));
        let thread = thread::spawn(move || {
            let _guard = guard;
            panic!("a bug in the event loop");
        });
        assert!(thread.join().is_err());
        assert!(notified(&died), "no notification after a panic");
    }

    #[test]
    fn a_reactor_thread_that_returns_says_nothing() {
        let died = Arc::new(EventFd::new().unwrap());
        let guard = NotifyOnPanic(Arc::clone(&died));
        thread::spawn(move || drop(guard)).join().unwrap();
        assert!(!notified(&died));
    }
}
