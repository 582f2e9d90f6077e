//! The ring: every `unsafe` io_uring operation this chapter makes, behind a
//! small safe API, so that server.rs reads as the completion model and not
//! as FFI. The `io-uring` crate maps the queues and builds the entries; this
//! module decides what memory the kernel may touch and for how long.
//!
//! - [`Ring`]: one io_uring instance (a submission and a completion queue).
//!   Pushing an entry is `unsafe` in the crate because an entry may carry a
//!   pointer the kernel will use later; here, only [`Ring::send`] carries
//!   one, and it takes the buffer by value and keeps it until the send's
//!   completion hands it back ([`Ring::finish_send`]). No other code can
//!   touch a buffer while the kernel holds it: ownership says so.
//! - [`BufRing`]: a provided buffer ring. The kernel picks a buffer from it
//!   when data arrives for a multishot receive; we give the buffer back
//!   ([`BufRing::recycle`]) once its bytes are copied out.
//! - [`probe`]: is io_uring usable here at all, and if not, why.

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};

/// One completion, copied out of the completion queue so that the queue's
/// slot is free again before we act on it.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    /// What the operation returned: bytes, a descriptor, or `-errno`.
    pub result: i32,
    flags: u32,
}

impl Completion {
    /// A multishot operation (accept, receive, poll) stays armed: more
    /// completions will come from the same submission. Without this flag it
    /// has ended, for whatever reason, and must be submitted again.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel picked for a receive, by id.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// A completion as the kernel would post it, for unit tests: flags
    /// `IORING_CQE_F_BUFFER` (1) with the buffer id in the high 16 bits,
    /// and `IORING_CQE_F_MORE` (2).
    #[cfg(test)]
    pub fn for_test(user_data: u64, result: i32, buffer_id: Option<u16>, more: bool) -> Completion {
        let buffer = buffer_id.map_or(0, |id| 1 | u32::from(id) << 16);
        let more = if more { 2 } else { 0 };
        Completion {
            user_data,
            result,
            flags: buffer | more,
        }
    }
}

/// What the ring did, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingStats {
    /// `io_uring_enter` calls made by this reactor.
    pub enters: u64,
    /// Entries submitted.
    pub submitted: u64,
    /// Completions reaped.
    pub completions: u64,
    /// Times the submission queue was full and had to be submitted early
    /// (an extra `io_uring_enter` in that turn).
    pub sq_full: u64,
    /// Completions the kernel could not fit in the completion queue and
    /// kept aside (`IORING_FEAT_NODROP`); none are lost, but each one means
    /// the queue was too small for a turn's work.
    pub cq_overflow: u64,
}

impl std::ops::AddAssign for RingStats {
    fn add_assign(&mut self, other: RingStats) {
        self.enters += other.enters;
        self.submitted += other.submitted;
        self.completions += other.completions;
        self.sq_full += other.sq_full;
        self.cq_overflow += other.cq_overflow;
    }
}

// ANCHOR: ring
pub struct Ring {
    ring: IoUring,
    /// The buffer of each send the kernel may still be reading, by the
    /// send's user data, with the offset the send started at. Moved in by
    /// `send`, moved out by `finish_send`. A map, not a `Vec` indexed by
    /// slot: it holds the sends in flight, so an idle connection costs it
    /// nothing.
    sends_in_flight: HashMap<u64, (Vec<u8>, usize)>,
    sqpoll: bool,
    stats: RingStats,
}

impl Ring {
    /// A ring with `entries` submission slots and four times as many
    /// completion slots (multishot operations post many completions per
    /// submission). Without `sqpoll`, the kernel runs completion work only
    /// when this thread enters the ring (`DEFER_TASKRUN`, which requires
    /// `SINGLE_ISSUER`): the work of a whole turn is done in one batch, in
    /// our one `io_uring_enter`, instead of interrupting us as it arrives.
    /// With `sqpoll`, a kernel thread polls the submission queue, so
    /// submitting needs no syscall while that thread is awake.
    pub fn new(entries: u32, sqpoll: Option<Duration>) -> io::Result<Ring> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries * 4);
        match sqpoll {
            Some(idle) => {
                builder.setup_sqpoll(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX));
            }
            None => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
        }
        let ring = match builder.build(entries) {
            Ok(ring) => ring,
            // A kernel older than 6.1 does not know DEFER_TASKRUN: plain.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && sqpoll.is_none() => {
                IoUring::builder()
                    .setup_cqsize(entries * 4)
                    .build(entries)?
            }
            Err(e) => return Err(e),
        };
        Ok(Ring {
            ring,
            sends_in_flight: HashMap::new(),
            sqpoll: sqpoll.is_some(),
            stats: RingStats::default(),
        })
    }

    pub fn stats(&mut self) -> RingStats {
        self.stats.cq_overflow = u64::from(self.ring.completion().overflow());
        self.stats
    }

    /// Queues one entry; if the submission queue is full, submits what is
    /// queued first (the only time a turn makes a second `io_uring_enter`).
    ///
    /// # Safety
    ///
    /// Every pointer in `entry` must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller guarantees that the memory `entry` points
            // to outlives the operation.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.stats.sq_full += 1;
            self.enter(0, None)?;
        }
    }

    /// Arms a multishot accept: one completion per new connection, each
    /// carrying the new descriptor (blocking, close-on-exec: io_uring
    /// waits for readiness itself, and on an `O_NONBLOCK` socket it would
    /// hand us `EAGAIN` instead of waiting).
    pub fn accept_multishot(&mut self, listener: RawFd, user_data: u64) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data);
        // SAFETY: a multishot accept carries no pointer (no address out).
        unsafe { self.push(&entry) }
    }

    /// Arms a multishot receive into buffer group `group`: one completion
    /// per arrival of data, each naming the provided buffer the kernel
    /// filled. Until data arrives the connection holds no buffer at all.
    pub fn recv_multishot(&mut self, socket: RawFd, group: u16, user_data: u64) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(socket), group)
            .build()
            .user_data(user_data);
        // SAFETY: no pointer: the kernel picks its memory from the buffer
        // ring, whose lifetime `BufRing` guarantees.
        unsafe { self.push(&entry) }
    }

    // ANCHOR: send
    /// Sends `buffer[offset..]` on `socket`. The buffer moves into the ring
    /// and stays there, untouchable, until the send's completion is reaped
    /// and [`Ring::finish_send`] hands it back. At most one send per
    /// `user_data` may be in flight.
    pub fn send(
        &mut self,
        socket: RawFd,
        buffer: Vec<u8>,
        offset: usize,
        user_data: u64,
    ) -> io::Result<()> {
        let unsent = &buffer[offset..];
        let len = u32::try_from(unsent.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(Fd(socket), unsent.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        // The heap block a `Vec` points to does not move when the `Vec`
        // itself moves, so the pointer in `entry` stays valid here.
        let previous = self.sends_in_flight.insert(user_data, (buffer, offset));
        assert!(previous.is_none(), "two sends in flight as {user_data:#x}");
        // SAFETY: the entry points into the buffer now owned by
        // `sends_in_flight`, which only `finish_send` (after the
        // send's completion) takes out. If the ring is dropped with sends
        // still in flight, `Drop` leaks their buffers instead of freeing
        // them.
        unsafe { self.push(&entry) }
    }

    /// Gives back the map's peak capacity (after a crowd has left).
    pub fn shrink_sends_in_flight(&mut self) {
        self.sends_in_flight.shrink_to_fit();
    }

    /// The buffer of the send submitted as `user_data` and the offset it
    /// started at, once its completion has been reaped.
    pub fn finish_send(&mut self, user_data: u64) -> Option<(Vec<u8>, usize)> {
        self.sends_in_flight.remove(&user_data)
    }
    // ANCHOR_END: send

    /// Asks the kernel to cancel the operation submitted with `target`
    /// (matched by user data, which carries a generation, so it cannot hit a
    /// later connection's operation). The cancelled operation then completes
    /// with `-ECANCELED` (or with its result, if it was already done); the
    /// cancel request itself completes with `user_data`.
    pub fn cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data);
        // SAFETY: no pointer.
        unsafe { self.push(&entry) }
    }

    /// One completion when `fd` becomes readable (one-shot: re-arm it).
    pub fn poll_readable(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let events = u32::try_from(libc::POLLIN).unwrap_or(1);
        let entry = opcode::PollAdd::new(Fd(fd), events)
            .build()
            .user_data(user_data);
        // SAFETY: no pointer.
        unsafe { self.push(&entry) }
    }

    // ANCHOR: enter
    /// The turn's one system call: submits every queued entry and, unless
    /// completions are already waiting, sleeps until at least one arrives
    /// or `timeout` passes (`None`: no timeout). A timeout or a signal is
    /// not an error: the caller just looks at the clock and goes on.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let want = if self.ring.completion().is_empty() {
            1
        } else {
            0
        };
        match self.enter(want, timeout) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        let queued = self.ring.submission().len();
        if want == 0 && queued == 0 {
            return Ok(()); // nothing to submit, nothing to wait for
        }
        // With SQPOLL, the crate skips the syscall when the kernel thread is
        // awake and we do not wait: count what it really does.
        if want > 0 || !self.sqpoll || self.ring.submission().need_wakeup() {
            self.stats.enters += 1;
        }
        self.stats.submitted += queued as u64;
        let submitter = self.ring.submitter();
        match timeout {
            Some(timeout) if want > 0 => {
                let ts = Timespec::new()
                    .sec(timeout.as_secs())
                    .nsec(timeout.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(want, &args)?;
            }
            _ => {
                submitter.submit_and_wait(want)?;
            }
        }
        Ok(())
    }
    // ANCHOR_END: enter

    /// Moves up to `max` of the completions waiting in the queue into
    /// `into`; the rest wait for the next turn (whose enter then does not
    /// sleep).
    pub fn completions(&mut self, into: &mut Vec<Completion>, max: usize) {
        let before = into.len();
        into.extend(self.ring.completion().take(max).map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
        self.stats.completions += (into.len() - before) as u64;
    }

    /// Registers a provided buffer ring of `count` buffers of `size` bytes
    /// as buffer group `group`.
    pub fn register_buf_ring(&self, group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        BufRing::new(&self.ring, group, count, size)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Closing the ring cancels what is in flight, but the kernel does
        // that asynchronously, after `close` returns: a send it has not yet
        // let go of must not be freed under it. Leak those (a few, once, as
        // the reactor stops).
        for send in self.sends_in_flight.drain() {
            std::mem::forget(send);
        }
    }
}
// ANCHOR_END: ring

// ANCHOR: buf_ring
/// A provided buffer ring: `count` buffers of `size` bytes, and the ring of
/// `io_uring_buf` entries (address, length, id) through which we offer them
/// to the kernel. The kernel consumes entries from the head; we add them
/// at the tail, then publish the tail with a release store so the kernel
/// sees complete entries.
///
/// Ownership: a buffer is the kernel's from the moment it is published to
/// the moment a completion names it; ours from then until we recycle it.
/// [`BufRing::buffer`] borrows `self` and [`BufRing::recycle`] needs it
/// mutably, so the borrow checker proves we stop reading a buffer before
/// we give it back.
///
/// Never freed: the kernel may still write into these buffers while it
/// tears a ring down after `close` (it does that asynchronously), so the
/// memory is leaked when a reactor stops rather than handed back to the
/// allocator under the kernel's feet. Once per reactor, at exit.
pub struct BufRing {
    entries: NonNull<BufRingEntry>,
    memory: NonNull<u8>,
    size: u32,
    count: u16,
    /// Our copy of the tail: entries written but maybe not yet published.
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring, group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || size == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let page = 4096;
        let entries_layout =
            Layout::from_size_align(usize::from(count) * size_of::<BufRingEntry>(), page)
                .map_err(io::Error::other)?;
        let memory_layout = Layout::from_size_align(usize::from(count) * size as usize, page)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count >= 1, size >= 1).
        let (entries, memory) = unsafe {
            (
                alloc::alloc_zeroed(entries_layout).cast::<BufRingEntry>(),
                alloc::alloc_zeroed(memory_layout),
            )
        };
        let (Some(entries), Some(memory)) = (NonNull::new(entries), NonNull::new(memory)) else {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        };
        // Touch every page now: the buffers are this reactor's fixed cost,
        // paid at start-up, not page faults on the data path (and not RSS
        // that seems to grow with traffic).
        for page_start in (0..memory_layout.size()).step_by(page) {
            // SAFETY: in bounds of the allocation just made, which nothing
            // else (the kernel included) knows of yet.
            unsafe { memory.as_ptr().add(page_start).write_volatile(0) };
        }
        let mut buf_ring = BufRing {
            entries,
            memory,
            size,
            count,
            tail: 0,
        };
        // SAFETY: the entry ring is page-aligned, zeroed (tail 0) and
        // `count` entries long, and it lives as long as the `BufRing`,
        // which the caller keeps for as long as the ring (see `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries.as_ptr() as u64,
                count,
                group,
                0,
            )?;
        }
        for id in 0..count {
            buf_ring.recycle(id);
        }
        buf_ring.publish();
        Ok(buf_ring)
    }

    /// The first `len` bytes of buffer `id`, which a completion just handed
    /// us.
    pub fn buffer(&self, id: u16, len: usize) -> &[u8] {
        assert!(id < self.count && len <= self.size as usize);
        let offset = usize::from(id) * self.size as usize;
        // SAFETY: in bounds (checked above). The kernel wrote these bytes
        // before posting the completion that named `id`, and will not write
        // buffer `id` again until `recycle(id)` offers it back, which needs
        // `&mut self`, so not while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.memory.as_ptr().add(offset), len) }
    }

    /// Offers buffer `id` to the kernel again (seen after `publish`).
    pub fn recycle(&mut self, id: u16) {
        assert!(id < self.count);
        let mask = self.count - 1;
        let index = usize::from(self.tail & mask);
        // SAFETY: `index` < count, so the entry is inside the allocation;
        // the kernel does not read entries past the published tail, and
        // this one is past it until `publish`.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `id` < count, so the address is inside `memory`.
        let address = unsafe {
            self.memory
                .as_ptr()
                .add(usize::from(id) * self.size as usize)
        };
        entry.set_addr(address as u64);
        entry.set_len(self.size);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// How many buffers have been offered so far (wrapping): each
    /// `recycle` adds one.
    #[cfg(test)]
    pub fn offered(&self) -> u16 {
        self.tail
    }

    /// Makes every recycled buffer visible to the kernel: one release store
    /// of the tail, once per turn however many were recycled.
    pub fn publish(&mut self) {
        // SAFETY: `entries` is the first entry of the registered ring, so
        // its `resv` field is the ring's tail, a u16 the kernel reads
        // atomically; it is aligned and lives as long as `self`.
        let tail =
            unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries.as_ptr()).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

// ANCHOR_END: buf_ring

// ANCHOR: probe
/// Whether io_uring with what this chapter needs works here; if not, one
/// sentence naming the cause and what to do.
pub fn probe(sqpoll: Option<Duration>) -> Result<(), String> {
    let ring = match Ring::new(8, sqpoll) {
        Ok(ring) => ring,
        Err(e) => return Err(explain_setup_error(&e)),
    };
    match ring.register_buf_ring(u16::MAX, 1, 64) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(format!(
            "io_uring works but cannot register a provided buffer ring ({e}): \
             this chapter needs Linux 6.0 or newer (running {})",
            kernel_release()
        )),
        Err(e) => Err(format!("io_uring_register(PBUF_RING): {e}")),
    }
}

fn explain_setup_error(error: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|value| value.trim().parse::<u32>().ok());
    match (error.raw_os_error(), disabled) {
        (Some(libc::ENOSYS), _) => format!(
            "io_uring is not available: this kernel ({}) has no io_uring_setup (ENOSYS): \
             it is older than 5.1 or built without CONFIG_IO_URING; use chapter 08",
            kernel_release()
        ),
        (Some(libc::EPERM), Some(2)) => "io_uring is disabled on this host: \
             kernel.io_uring_disabled=2 (as root: sysctl kernel.io_uring_disabled=0); \
             or use chapter 08"
            .to_string(),
        (Some(libc::EPERM), Some(1)) => "io_uring is restricted on this host: \
             kernel.io_uring_disabled=1 allows it only to CAP_SYS_ADMIN and the group in \
             kernel.io_uring_group; or use chapter 08"
            .to_string(),
        (Some(libc::EPERM), _) => "io_uring_setup was refused (EPERM) though \
             kernel.io_uring_disabled allows it: a seccomp filter (e.g. a container \
             runtime's default profile) blocks io_uring; run outside it, or use chapter 08"
            .to_string(),
        (Some(libc::EINVAL), _) => format!(
            "io_uring_setup rejected our parameters (EINVAL): this kernel ({}) is too old \
             for this chapter (it needs 6.0+); use chapter 08",
            kernel_release()
        ),
        (Some(libc::ENOMEM), _) => "io_uring_setup: ENOMEM: the ring's memory is locked \
             memory on kernels before 5.12: raise `ulimit -l`"
            .to_string(),
        _ => format!("io_uring_setup: {error}"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_string(), |r| r.trim().to_string())
}
// ANCHOR_END: probe
