//! Exercise 01: a bounded thread pool for the chapter 01 echo server.
//!
//! Chapter 01 spawns one OS thread per client, so a flood of clients is a
//! flood of threads. Here the number of handler threads is fixed: a
//! [`ThreadPool`] of `n` workers takes jobs from one shared queue. The echo
//! server in [`server`] already uses it; your task is the pool itself.

use std::sync::{Arc, Mutex, mpsc};
use std::thread;

pub mod server;

/// A queued unit of work: boxed, because every closure has its own type.
type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed number of worker threads running queued jobs.
///
/// - `ThreadPool::new(n)` starts exactly `n` worker threads.
/// - `execute(job)` queues `job` and returns at once; some idle worker runs
///   it. Never more than `n` jobs run at the same time.
/// - Dropping the pool lets the workers finish every job already queued,
///   then joins them: when `drop` returns, all jobs have run.
pub struct ThreadPool {
    /// The sending half of the job queue. `None` once `drop` has closed it.
    job_queue: Option<mpsc::Sender<Job>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl ThreadPool {
    /// Start a pool of `size` worker threads.
    ///
    /// # Panics
    ///
    /// If `size` is zero, or if the operating system refuses to create a
    /// thread (the pool could not keep its promise of `size` workers).
    pub fn new(size: usize) -> ThreadPool {
        assert!(size > 0, "a thread pool needs at least one thread");
        let (job_queue, jobs) = mpsc::channel::<Job>();
        // One receiver, shared: whichever idle worker takes the lock first
        // gets the next job.
        let jobs = Arc::new(Mutex::new(jobs));
        let workers = (0..size)
            .map(|index| {
                let jobs = Arc::clone(&jobs);
                thread::Builder::new()
                    .name(format!("pool-worker-{index}"))
                    .spawn(move || run_jobs(&jobs))
                    .unwrap_or_else(|e| panic!("cannot start pool worker {index}: {e}"))
            })
            .collect();
        ThreadPool {
            job_queue: Some(job_queue),
            workers,
        }
    }

    /// Queue `job` to run on one of the pool's threads.
    pub fn execute<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let Some(job_queue) = &self.job_queue else {
            unreachable!("the queue is only closed in drop");
        };
        // Fails only if every worker is gone, which happens only if every
        // one of them panicked inside a job.
        if job_queue.send(Box::new(job)).is_err() {
            panic!("every pool worker has died (a job panicked in each)");
        }
    }
}

/// A worker's life: take the next job, run it, repeat until the queue is
/// closed and empty.
fn run_jobs(jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock guard is a temporary of this statement: it is released
        // before the job runs, so other workers can take jobs meanwhile.
        let next = match jobs.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_poisoned) => return,
        };
        match next {
            Ok(job) => job(),
            // The pool dropped its sender and the queue is empty: done.
            Err(mpsc::RecvError) => return,
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // Closing the queue is the stop signal: `recv` keeps returning the
        // jobs already queued, then errors, and each worker returns.
        drop(self.job_queue.take());
        for worker in self.workers.drain(..) {
            // A worker that panicked has nothing more to say here.
            let _ = worker.join();
        }
    }
}
