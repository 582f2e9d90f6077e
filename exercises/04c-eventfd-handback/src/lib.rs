//! Exercise 04c: the way back from the workers to the event loop.
//!
//! Chapter 04's event loop only ever sleeps in `epoll_wait`, so a worker
//! cannot hand it a result through a channel: the loop would never look.
//! Instead a worker puts the result in a list behind a mutex and writes to
//! an eventfd that sits in the loop's epoll set. Two things can go wrong:
//!
//! - a **lost wake-up**: a result sits in the list while the eventfd reads
//!   empty, and the loop sleeps with work waiting (until some later result
//!   happens to wake it, or forever);
//! - a **stale id**: the connection closed while its job ran, and the
//!   kernel gave its descriptor number to a new client, who must not
//!   receive someone else's bytes.
//!
//! Write `Completions::deliver`, `Completions::take_all` and
//! `Connections::get_mut`, marked `todo!()`.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
compile_error!("eventfd is Linux-only");

/// A counter in the kernel that reads as a descriptor: `notify` adds 1 and
/// makes it readable (epoll reports it), `reset` reads it back to 0.
pub struct EventFd {
    fd: RawFd,
    /// How many times `notify` was called: each is a syscall, and a wake-up
    /// of the loop if it was asleep.
    notifications: AtomicU64,
    /// Test seam, see [`EventFd::before_next_reset`].
    before_reset: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall with an initial value and flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(EventFd {
            fd,
            notifications: AtomicU64::new(0),
            before_reset: Mutex::new(None),
        })
    }

    /// The descriptor the loop registers with epoll.
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Adds 1 to the counter: the loop wakes up. Safe from any thread.
    pub fn notify(&self) -> io::Result<()> {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: we pass exactly one readable u64, as eventfd(2) requires.
        let rc = unsafe { libc::write(self.fd, (&raw const one).cast(), size_of::<u64>()) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the counter back to 0, so that epoll stops reporting it until
    /// the next `notify`. Already 0 is fine (a spurious wake-up).
    pub fn reset(&self) -> io::Result<()> {
        let hook = self
            .before_reset
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(hook) = hook {
            hook();
        }
        let mut value: u64 = 0;
        // SAFETY: we pass a writable u64, the size eventfd(2) reads into.
        let rc = unsafe { libc::read(self.fd, (&raw mut value).cast(), size_of::<u64>()) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether the loop would wake up: waits up to `timeout` for the
    /// counter to be non-zero (`poll(2)`, as `epoll_wait` would see it).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pollfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, and we say so.
        let rc = unsafe { libc::poll(&raw mut pollfd, 1, millis) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc == 1)
    }

    /// How many times `notify` has been called.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Test seam: runs `hook` at the start of the next `reset`, before the
    /// counter is read back. The tests use it to deliver a result at the
    /// worst possible moment, so that a race that would strike once in a
    /// million runs strikes every time.
    pub fn before_next_reset(&self, hook: impl FnOnce() + Send + 'static) {
        *self
            .before_reset
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(hook));
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it exactly once.
        unsafe { libc::close(self.fd) };
    }
}

/// Which connection a result is for: the descriptor number, and the serial
/// number of the connection that had it when the job was handed out (the
/// kernel reuses a closed descriptor's number for the next accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionId {
    pub fd: RawFd,
    pub serial: u32,
}

/// A job done: the bytes to echo, and whose they are.
#[derive(Debug, PartialEq, Eq)]
pub struct Completed {
    pub connection: ConnectionId,
    pub data: Vec<u8>,
}

/// The way back: finished jobs wait here until the loop takes them.
pub struct Completions {
    finished: Mutex<Finished>,
    /// Readable when `finished` has something the loop has not taken.
    waker: EventFd,
}

#[derive(Default)]
struct Finished {
    jobs: Vec<Completed>,
    /// A notify is on its way and the loop has not taken the list since:
    /// further results need not notify again, so one wake-up collects a
    /// whole batch.
    loop_notified: bool,
}

impl Completions {
    pub fn new() -> io::Result<Completions> {
        Ok(Completions {
            finished: Mutex::new(Finished::default()),
            waker: EventFd::new()?,
        })
    }

    /// The eventfd in the loop's epoll set.
    pub fn waker(&self) -> &EventFd {
        &self.waker
    }

    /// Worker side: add `done` to the list, and wake the loop unless a
    /// wake-up is already on its way (`loop_notified`). One `notify` per
    /// batch, not per result: each is a syscall.
    pub fn deliver(&self, done: Completed) -> io::Result<()> {
        let _ = done;
        todo!("push under the lock; notify (outside it) only if nobody has since the last take")
    }

    /// Loop side: move every finished job into `into` (empty on entry) and
    /// leave the eventfd reading 0, without ever stranding a result: one
    /// delivered while this runs must either be taken now or leave the
    /// eventfd readable.
    pub fn take_all(&self, into: &mut Vec<Completed>) -> io::Result<()> {
        let _ = into;
        todo!("reset the eventfd, clear `loop_notified` and swap the list: in which order?")
    }
}

/// The loop's connections, indexed by descriptor number.
pub struct Connections<T> {
    /// Slot `fd`: the serial number of the connection on it, and its state.
    slots: Vec<Option<(u32, T)>>,
    next_serial: u32,
}

impl<T> Connections<T> {
    pub fn new() -> Connections<T> {
        Connections {
            slots: Vec::new(),
            next_serial: 1,
        }
    }

    /// A connection accepted on `fd`: it gets the next serial number.
    ///
    /// # Panics
    ///
    /// If `fd` is negative or already holds a connection.
    pub fn insert(&mut self, fd: RawFd, state: T) -> ConnectionId {
        let slot = usize::try_from(fd).expect("a descriptor is never negative");
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        assert!(self.slots[slot].is_none(), "descriptor {fd} is in use");
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.slots[slot] = Some((serial, state));
        ConnectionId { fd, serial }
    }

    /// The connection on `fd` closed; its descriptor number is free again.
    pub fn remove(&mut self, fd: RawFd) -> Option<T> {
        let slot = usize::try_from(fd).ok()?;
        self.slots.get_mut(slot)?.take().map(|(_, state)| state)
    }

    /// The connection `id` names, if it is still open: a result for a
    /// connection that closed while its job ran must not reach the next
    /// connection that got the same descriptor number.
    pub fn get_mut(&mut self, id: ConnectionId) -> Option<&mut T> {
        let _ = id;
        todo!("the slot of `id.fd`, only if its serial is `id.serial`")
    }
}

impl<T> Default for Connections<T> {
    fn default() -> Connections<T> {
        Connections::new()
    }
}
