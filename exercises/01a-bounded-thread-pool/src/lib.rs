//! Exercise 01: a bounded thread pool for the chapter 01 echo server.
//!
//! Chapter 01 spawns one OS thread per client, so a flood of clients is a
//! flood of threads. Here the number of handler threads is fixed: a
//! [`ThreadPool`] of `n` workers takes jobs from one shared queue. The echo
//! server in [`server`] already uses it; your task is the pool itself.

pub mod server;

/// A fixed number of worker threads running queued jobs.
///
/// - `ThreadPool::new(n)` starts exactly `n` worker threads.
/// - `execute(job)` queues `job` and returns at once; some idle worker runs
///   it. Never more than `n` jobs run at the same time.
/// - Dropping the pool lets the workers finish every job already queued,
///   then joins them: when `drop` returns, all jobs have run.
pub struct ThreadPool {
    // Your fields: what does `execute` need to hand a job over, and what
    // does `drop` need to wait for the workers?
}

impl ThreadPool {
    /// Start a pool of `size` worker threads.
    ///
    /// # Panics
    ///
    /// If `size` is zero: a pool that can never run a job is a bug.
    pub fn new(size: usize) -> ThreadPool {
        assert!(size > 0, "a thread pool needs at least one thread");
        todo!("start `size` workers that take jobs from one shared queue")
    }

    /// Queue `job` to run on one of the pool's threads.
    pub fn execute<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let _ = job;
        todo!("send the job to the workers")
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        todo!("tell the workers no more jobs are coming, then join them")
    }
}
