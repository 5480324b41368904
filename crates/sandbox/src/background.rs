//! The sandbox's background thread pools (one builds spare instances, one tears down used
//! ones), off the calls' path. A call hands its work over with a queue push and, at most, a wake-up
//! (microseconds); spawning a thread per job cost the call about 70 µs of its latency on a
//! 2-core VM (a `clone`, a stack mapped) before it could answer.
//!
//! At most `max` threads (the machine's cores by default), started when work arrives and none
//! is idle; a thread idle for [`IDLE_EXIT`] ends, and all end once the pool is closed and its
//! queue is empty.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a thread waits for work before it ends.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(60);

type Job = Box<dyn FnOnce() + Send>;

/// A bounded set of threads running queued jobs in order of arrival.
pub(crate) struct Background {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    max: usize,
    /// Run by each thread as it starts (e.g. to lower its priority).
    on_start: fn(),
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Threads alive, and those of them waiting for work.
    threads: usize,
    idle: usize,
    closed: bool,
}

impl Background {
    /// A pool of at most `max` (≥ 1) threads named `name`, each running `on_start` first;
    /// none runs until work arrives.
    pub(crate) fn new(name: &str, max: usize, on_start: fn()) -> Background {
        Background {
            shared: Arc::new(Shared {
                name: name.into(),
                max: max.max(1),
                on_start,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Queues `job`: an idle thread takes it, else a new one if fewer than `max` run, else
    /// the first thread to finish its job. If no thread can be started and none is alive,
    /// `job` runs here, so that nothing queued is ever left behind.
    pub(crate) fn run(&self, job: impl FnOnce() + Send + 'static) {
        let mut state = lock(&self.shared.state);
        state.jobs.push_back(Box::new(job));
        if state.idle > 0 {
            drop(state);
            self.shared.work.notify_one();
            return;
        }
        if state.threads >= self.shared.max {
            return;
        }
        state.threads += 1;
        drop(state);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(self.shared.name.clone())
            .spawn(move || {
                (shared.on_start)();
                shared.serve();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a background thread: the work runs on the caller's");
            let mut state = lock(&self.shared.state);
            state.threads -= 1;
            if state.threads == 0 {
                let jobs = std::mem::take(&mut state.jobs);
                drop(state);
                jobs.into_iter().for_each(|job| job());
            }
        }
    }

    /// Threads alive now.
    #[cfg(test)]
    fn threads(&self) -> usize {
        lock(&self.shared.state).threads
    }
}

impl Drop for Background {
    /// Threads finish the jobs queued, then end.
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn serve(&self) {
        let mut state = lock(&self.state);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                // A job that panics (a bug) is logged; the thread goes on serving the queue.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!(pool = %self.name, "a background job panicked");
                }
                state = lock(&self.state);
                continue;
            }
            if state.closed {
                break;
            }
            state.idle += 1;
            let (next, waited) = self
                .work
                .wait_timeout_while(state, IDLE_EXIT, |s| s.jobs.is_empty() && !s.closed)
                .unwrap_or_else(PoisonError::into_inner);
            state = next;
            state.idle -= 1;
            if waited.timed_out() && state.jobs.is_empty() {
                break;
            }
        }
        state.threads -= 1;
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    /// Waits (at most 10 s) for `done`.
    fn wait_until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next `n` numbers the jobs sent, sorted.
    fn received(finished: &mpsc::Receiver<i32>, n: usize) -> Vec<i32> {
        let mut got: Vec<i32> = (0..n)
            .map(|_| {
                finished
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a job")
            })
            .collect();
        got.sort_unstable();
        got
    }

    #[test]
    fn jobs_run_on_at_most_max_threads_and_all_of_them_run() {
        let pool = Background::new("test-background", 2, || {});
        let (started, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(())));
        let held = gate.lock().expect("gate");
        let (done, finished) = mpsc::channel();
        for i in 0..10 {
            let (started, gate, done) = (started.clone(), gate.clone(), done.clone());
            pool.run(move || {
                started.fetch_add(1, Ordering::SeqCst);
                drop(gate.lock());
                done.send(i).expect("send");
            });
        }
        // Two threads, each holding one job until the gate opens.
        wait_until(|| started.load(Ordering::SeqCst) >= 2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(pool.threads(), 2);
        drop(held);
        assert_eq!(received(&finished, 10), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn an_idle_thread_takes_the_next_job_and_a_closed_pool_finishes_its_queue() {
        let pool = Background::new("test-background", 4, || {});
        let (done, finished) = mpsc::channel();
        for i in 0..3 {
            let done = done.clone();
            pool.run(move || done.send(i).expect("send"));
            assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok(i));
            // The thread that ran it is idle now and takes the next: one thread in all.
            wait_until(|| lock(&pool.shared.state).idle > 0);
        }
        assert_eq!(pool.threads(), 1);
        let shared = pool.shared.clone();
        let slow = done.clone();
        pool.run(move || {
            std::thread::sleep(Duration::from_millis(50));
            slow.send(10).expect("send");
        });
        pool.run(move || done.send(11).expect("send"));
        drop(pool);
        assert_eq!(
            received(&finished, 2),
            [10, 11],
            "both queued jobs ran after the close"
        );
        wait_until(|| lock(&shared.state).threads == 0);
        assert_eq!(lock(&shared.state).threads, 0, "threads end once closed");
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_serving() {
        let pool = Background::new("test-background", 1, || {});
        pool.run(|| panic!("a job fails"));
        let (done, finished) = mpsc::channel();
        pool.run(move || done.send(()).expect("send"));
        assert_eq!(finished.recv_timeout(Duration::from_secs(10)), Ok(()));
        assert_eq!(pool.threads(), 1, "the same thread served on");
    }
}
