//! The worker pool: where the `--work-us` request work runs now, off the
//! event-loop thread, and the way its results get back to the loop.
//!
//! The loop hands over a [`Job`] (the bytes of one read, and which
//! connection they came from) and never waits for it. A worker runs it and
//! delivers a [`Completed`] into [`Completions`]: a list behind a mutex, plus
//! an eventfd in the loop's epoll set, so the loop learns of results from
//! the same `epoll_wait` that tells it about sockets.
//!
//! Two pools do the running, chosen with `--pool`: a hand-rolled one (a
//! channel and N threads, as in exercise 01) and `rayon::ThreadPool`. The
//! book page measures them against each other.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::slab::Token;
use crate::sys::EventFd;

// ANCHOR: job
/// The bytes of one or more receives, on their way to a worker. They are
/// copied out of the provided buffers (which go straight back to the
/// kernel's buffer ring) into a `Vec` the job owns: already the echo the
/// connection owes, so it comes back ready to send.
#[derive(Debug)]
pub struct Job {
    pub connection: Token,
    pub data: Vec<u8>,
}

/// A job done: the same bytes, now ready to be echoed.
#[derive(Debug)]
pub struct Completed {
    pub connection: Token,
    pub data: Vec<u8>,
}

impl Job {
    /// The request work, on a worker thread.
    fn run(self, work_per_newline: Duration) -> Completed {
        spend_work(&self.data, work_per_newline);
        Completed {
            connection: self.connection,
            data: self.data,
        }
    }
}
// ANCHOR_END: job

// ANCHOR: work
/// `--work-us`: burn `work_per_newline` of CPU for each newline in `data`,
/// on a worker, while the event loop goes on serving every other client,
/// or on the loop when it costs less than the trip to a worker would (see
/// [`Offload`]).
pub fn spend_work(data: &[u8], work_per_newline: Duration) {
    if work_per_newline.is_zero() {
        return;
    }
    for _ in data.iter().filter(|&&byte| byte == b'\n') {
        let until = Instant::now() + work_per_newline;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// How much work `data` asks for: `work_per_newline` for each newline. The
/// loop knows it before the work runs, as a real server knows which of its
/// requests are the expensive kind.
pub fn work_for(data: &[u8], work_per_newline: Duration) -> Duration {
    if work_per_newline.is_zero() {
        return Duration::ZERO;
    }
    let newlines = data.iter().filter(|&&byte| byte == b'\n').count();
    work_per_newline.saturating_mul(u32::try_from(newlines).unwrap_or(u32::MAX))
}
// ANCHOR_END: work

// ANCHOR: completions
// ANCHOR: completions_1
/// The way back: finished jobs wait here until the loop takes them.
#[derive(Debug)]
pub struct Completions {
    finished: Mutex<Finished>,
    /// Readable when `finished` has something for the loop.
    waker: EventFd,
}

#[derive(Debug, Default)]
struct Finished {
    jobs: Vec<Completed>,
    /// A notify is already on its way and the loop has not taken the list
    /// since: further workers need not write to the eventfd again. One
    /// wake-up then collects a whole batch of results.
    loop_notified: bool,
}

impl Completions {
    pub fn new() -> io::Result<Completions> {
        Ok(Completions {
            finished: Mutex::new(Finished::default()),
            waker: EventFd::new()?,
        })
    }

    /// The descriptor the loop registers with epoll.
    pub fn waker_fd(&self) -> RawFd {
        self.waker.raw_fd()
    }

    // ANCHOR_END: completions_1
    // ANCHOR: deliver_signature
    /// Worker side: hand a result to the loop, and wake it if nobody has yet.
    pub fn deliver(&self, done: Completed) {
        // ANCHOR_END: deliver_signature
        let wake_the_loop = {
            let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
            finished.jobs.push(done);
            !std::mem::replace(&mut finished.loop_notified, true)
        };
        // Outside the lock: the write is a syscall, and the loop may be
        // waiting for that lock. An eventfd write fails only if the counter
        // would pass 2^64 - 2, which adding 1 at a time never does.
        if wake_the_loop {
            let _ = self.waker.notify();
        }
    }
    // ANCHOR: completions_2

    // ANCHOR_END: completions_2
    // ANCHOR: take_all_signature
    /// Loop side: swap every finished job into `into` (which must be empty;
    /// swapping keeps both vectors' capacity, so steady state allocates
    /// nothing). Resetting the eventfd *before* taking the list is what makes
    /// this race-free: a result delivered after the swap finds
    /// `loop_notified` false and notifies again.
    pub fn take_all(&self, into: &mut Vec<Completed>) -> io::Result<()> {
        // ANCHOR_END: take_all_signature
        debug_assert!(into.is_empty());
        self.waker.reset()?;
        let mut finished = self.finished.lock().unwrap_or_else(PoisonError::into_inner);
        finished.loop_notified = false;
        std::mem::swap(&mut finished.jobs, into);
        Ok(())
    }
    // ANCHOR: completions_3
}
// ANCHOR_END: completions_3
// ANCHOR_END: completions

// ANCHOR: offload
/// `--offload`: which reads' work goes to the pool. Handing a job over and
/// taking its result back costs the loop a copy, a lock and an eventfd
/// round trip, and the process a thread wake-up: a few microseconds of CPU
/// for every job. Work that costs less than that is cheaper done on the
/// loop; work that costs much more would stall every other client there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Offload {
    /// Hand a read to the pool only when its work is above
    /// `--offload-above-us`; run anything cheaper on the loop.
    Auto,
    /// Hand every read to the pool, even with `--work-us 0`: the price of
    /// the hand-off on its own.
    Always,
    /// Run all work on the loop, as chapter 03 does.
    Never,
}
// ANCHOR_END: offload

// ANCHOR: pool_kind
/// `--pool`: which pool runs the jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolKind {
    /// N threads taking `Job`s from one `std::sync::mpsc` channel.
    Hand,
    /// `rayon::ThreadPool` with N threads; each job is a spawned closure.
    Rayon,
}
// ANCHOR_END: pool_kind

// ANCHOR: hand_rolled
/// The hand-rolled pool: one channel of jobs, N threads taking from it.
/// The channel carries `Job`s by value, not boxed closures, so handing one
/// over allocates nothing beyond the channel's own (amortised) blocks.
struct HandRolledPool {
    /// `None` once we are shutting down: dropping the sender is what tells
    /// the workers to stop.
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl HandRolledPool {
    fn start(
        workers: usize,
        completions: &Arc<Completions>,
        work_per_newline: Duration,
        stopping: &Arc<AtomicBool>,
    ) -> io::Result<HandRolledPool> {
        let (sender, receiver) = mpsc::channel::<Job>();
        // One receiver, N workers: they share it behind a mutex. The worker
        // holding the lock waits in `recv`; the others wait for the lock.
        let receiver = Arc::new(Mutex::new(receiver));
        let mut pool = HandRolledPool {
            jobs: Some(sender),
            threads: Vec::with_capacity(workers),
        };
        for n in 0..workers {
            let receiver = Arc::clone(&receiver);
            let completions = Arc::clone(completions);
            let stopping = Arc::clone(stopping);
            let thread = thread::Builder::new()
                .name(format!("worker-{n}"))
                .spawn(move || worker_loop(&receiver, &completions, work_per_newline, &stopping))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    fn submit(&self, job: Job) {
        if let Some(jobs) = &self.jobs {
            // Fails only if every worker has exited, which happens only
            // after `drop` below took the sender: unreachable while we run.
            let _ = jobs.send(job);
        }
    }
}

fn worker_loop(
    jobs: &Mutex<Receiver<Job>>,
    completions: &Completions,
    work_per_newline: Duration,
    stopping: &AtomicBool,
) {
    loop {
        // The guard is a temporary of this statement: the lock is released
        // before the job runs, so the other workers can take the next one.
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else {
            return; // the sender is gone: shutdown
        };
        if stopping.load(Ordering::Relaxed) {
            continue; // shutting down: nobody will echo this any more
        }
        completions.deliver(job.run(work_per_newline));
    }
}

impl Drop for HandRolledPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
// ANCHOR_END: hand_rolled

// ANCHOR: workers
/// The loop's handle on the pool: hand jobs over, take results back, and
/// keep count of what is out, which is what bounds the queue.
pub struct Workers {
    pool: Pool,
    completions: Arc<Completions>,
    work_per_newline: Duration,
    /// Set on shutdown, so queued jobs are dropped instead of run.
    stopping: Arc<AtomicBool>,
    /// Jobs handed over and not yet taken back: queued, running, or done and
    /// waiting for the loop.
    outstanding: usize,
    /// `--queue-depth`: the most jobs that may be outstanding.
    max_outstanding: usize,
}

enum Pool {
    Hand(HandRolledPool),
    Rayon(rayon::ThreadPool),
}

impl Workers {
    pub fn start(
        kind: PoolKind,
        threads: usize,
        max_outstanding: usize,
        work_per_newline: Duration,
    ) -> io::Result<Workers> {
        let completions = Arc::new(Completions::new()?);
        let stopping = Arc::new(AtomicBool::new(false));
        let pool = match kind {
            PoolKind::Hand => Pool::Hand(HandRolledPool::start(
                threads,
                &completions,
                work_per_newline,
                &stopping,
            )?),
            PoolKind::Rayon => Pool::Rayon(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|n| format!("rayon-worker-{n}"))
                    .build()
                    .map_err(io::Error::other)?,
            ),
        };
        Ok(Workers {
            pool,
            completions,
            work_per_newline,
            stopping,
            outstanding: 0,
            max_outstanding: max_outstanding.max(1),
        })
    }

    pub fn waker_fd(&self) -> RawFd {
        self.completions.waker_fd()
    }

    /// Whether one more job may be handed over now.
    pub fn has_room(&self) -> bool {
        self.outstanding < self.max_outstanding
    }

    /// Hands `job` to a worker; returns at once. Call only if `has_room`.
    pub fn submit(&mut self, job: Job) {
        debug_assert!(self.has_room());
        self.outstanding += 1;
        match &self.pool {
            Pool::Hand(pool) => pool.submit(job),
            Pool::Rayon(pool) => {
                let completions = Arc::clone(&self.completions);
                let stopping = Arc::clone(&self.stopping);
                let work_per_newline = self.work_per_newline;
                // rayon runs closures: this one is boxed and queued in
                // rayon's injector, and an idle rayon thread is woken for it.
                pool.spawn(move || {
                    if !stopping.load(Ordering::Relaxed) {
                        completions.deliver(job.run(work_per_newline));
                    }
                });
            }
        }
    }

    /// Moves every finished job into `into` (empty on entry) and frees their
    /// places in the queue.
    pub fn take_completed(&mut self, into: &mut Vec<Completed>) -> io::Result<()> {
        self.completions.take_all(into)?;
        self.outstanding -= into.len();
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Queued jobs are for clients we are about to close: skip them.
        // (The hand-rolled pool then joins its threads as it drops; rayon's
        // threads finish on their own.)
        self.stopping.store(true, Ordering::Relaxed);
    }
}
// ANCHOR_END: workers
