//! The outbox's database thread: one OS thread that opens the database and runs every
//! transaction, one at a time, for the writer task.
//!
//! Tokio's blocking pool ran them before, on whichever of its threads was idle. Under
//! load the transactions then spread over three threads, and each kept its own mimalloc
//! heap of the pages they used (the rows read and sealed, the results): 1.1-1.5 MiB of
//! the daemon's peak RSS in the MQTT round-trip benchmark. One thread keeps them in one
//! heap (SQLite allocates from glibc, in one arena: `cmd::runtime`).
//! After [`IDLE`] without a job the thread gives the memory its jobs freed back to the
//! system (a blocking thread used to exit then, and its heap with it).
//!
//! A job's result comes back on a oneshot channel: the thread wakes the waiting task
//! directly, two wake-ups a transaction fewer than a blocking task waiting for it (a kit
//! at rest pays them per commit), and the blocking pool stays free for what else needs it
//! (name lookups): a slow lookup never delays a commit, nor a slow commit a lookup.
//!
//! The tests that pause tokio's clock need tokio to see a job as work in progress, or the
//! clock jumps ahead while SQLite works: for them ([`DbThread::spawn_for_paused_clock`])
//! a blocking task waits for each result instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

/// A job for the thread.
type Job = Box<dyn FnOnce() + Send>;

/// How long the thread waits for a job before it gives back the memory its jobs left in
/// its allocator heap, as tokio's blocking threads exit after 10 s without work. Then it
/// waits without a timeout: an idle kit's thread wakes once per quiet spell.
const IDLE: Duration = Duration::from_secs(10);

/// Returns this thread's freed memory to the system. Under mimalloc (the daemon's global
/// allocator) each thread's heap keeps partly used pages of the sizes it allocated; they
/// are what a transaction left (about 0.4 MiB at rest, `docs/benchmarks.md`).
fn give_back_memory() {
    // SAFETY: a plain call into the allocator, on this thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// The thread's handle. It stops when the handle is dropped, after the job it runs.
#[derive(Debug)]
pub(super) struct DbThread {
    jobs: mpsc::SyncSender<Job>,
    /// Whether a blocking task waits for each result (tests with a paused clock).
    blocking_wait: bool,
    /// Quiet spells in which the thread gave its memory back (logged; the tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    quiet_spells: Arc<AtomicU64>,
}

/// The thread is gone (a job panicked), or a job was given while another was waiting.
#[derive(Debug, thiserror::Error)]
#[error("the outbox database thread is gone")]
pub(super) struct Gone;

impl DbThread {
    /// Starts the thread.
    pub(super) fn spawn() -> std::io::Result<Self> {
        Self::spawn_idle_after(IDLE, false)
    }

    /// Starts the thread for tests that pause tokio's clock: a blocking task waits for
    /// each result, so tokio counts the job as work in progress and the clock does not
    /// jump ahead while it runs.
    #[cfg(test)]
    pub(super) fn spawn_for_paused_clock() -> std::io::Result<Self> {
        Self::spawn_idle_after(IDLE, true)
    }

    /// Starts the thread, giving its memory back after `idle` without a job.
    fn spawn_idle_after(idle: Duration, blocking_wait: bool) -> std::io::Result<Self> {
        // The writer runs one transaction at a time: one job waiting is the most there is.
        let (jobs, waiting) = mpsc::sync_channel::<Job>(1);
        let quiet_spells = Arc::new(AtomicU64::new(0));
        let spells = quiet_spells.clone();
        std::thread::Builder::new()
            .name("outbox-db".into())
            .spawn(move || loop {
                let job = match waiting.recv_timeout(idle) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        give_back_memory();
                        let n = spells.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::debug!(
                            quiet_spells = n,
                            "outbox database thread idle: its freed memory is given back"
                        );
                        match waiting.recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                };
                job();
            })?;
        Ok(Self {
            jobs,
            blocking_wait,
            quiet_spells,
        })
    }

    /// Runs `f` on the thread: the future resolves to its result, or to [`Gone`].
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Running<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        // A job not taken (the thread is gone) is dropped with its sender, and so is the
        // sender of a job that panics: the result is then `Gone`.
        let _ = self.jobs.try_send(job);
        Running(if self.blocking_wait {
            Waiting::Blocking(tokio::task::spawn_blocking(move || {
                result.blocking_recv().ok()
            }))
        } else {
            Waiting::Notified(result)
        })
    }
}

/// A job given to the thread: resolves to its result, or to [`Gone`].
#[derive(Debug)]
pub(super) struct Running<T>(Waiting<T>);

/// How a job's result is waited for.
#[derive(Debug)]
enum Waiting<T> {
    /// The thread wakes the task that polls.
    Notified(tokio::sync::oneshot::Receiver<T>),
    /// A blocking task waits (tests with a paused clock).
    Blocking(tokio::task::JoinHandle<Option<T>>),
}

impl<T> Future for Running<T> {
    type Output = Result<T, Gone>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Waiting::Notified(rx) => Pin::new(rx).poll(cx).map(|r| r.map_err(|_| Gone)),
            Waiting::Blocking(task) => Pin::new(task)
                .poll(cx)
                .map(|r| r.ok().flatten().ok_or(Gone)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread in both waiting modes.
    fn both() -> [DbThread; 2] {
        [
            DbThread::spawn().unwrap(),
            DbThread::spawn_for_paused_clock().unwrap(),
        ]
    }

    #[tokio::test]
    async fn jobs_run_one_at_a_time_on_one_thread() {
        for thread in both() {
            let first = thread.run(|| std::thread::current().id()).await.unwrap();
            let second = thread.run(|| std::thread::current().id()).await.unwrap();
            assert_eq!(first, second);
            assert_ne!(first, std::thread::current().id());
            assert_eq!(
                thread
                    .run(|| std::thread::current().name().map(String::from))
                    .await
                    .unwrap()
                    .as_deref(),
                Some("outbox-db")
            );
        }
    }

    #[tokio::test]
    async fn a_job_that_panics_is_reported_and_the_thread_is_gone() {
        for thread in both() {
            let panicked = thread.run(|| -> u32 { panic!("a job failed") }).await;
            assert!(panicked.is_err());
            // The thread ended with the panic: later jobs are reported, not lost silently.
            let later = thread.run(|| 1).await;
            assert!(later.is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_paused_clock_the_clock_waits_for_a_running_job() {
        let thread = DbThread::spawn_for_paused_clock().unwrap();
        let start = tokio::time::Instant::now();
        // A slow transaction (the sleep stands for SQLite's work), and a timer due later.
        let job = thread.run(|| std::thread::sleep(Duration::from_millis(50)));
        let timer = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            done = job => done.unwrap(),
            _ = timer => panic!("the paused clock jumped ahead while a job ran"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn after_a_quiet_spell_the_memory_is_given_back_once_and_jobs_still_run() {
        let thread = DbThread::spawn_idle_after(Duration::from_millis(20), false).unwrap();
        assert_eq!(thread.run(|| 1).await.unwrap(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while thread.quiet_spells.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "no quiet spell seen");
            tokio::task::yield_now().await;
        }
        // Waiting without a timeout now: one give-back per quiet spell, not one per 20 ms.
        assert_eq!(thread.run(|| 2).await.unwrap(), 2);
        assert!(thread.quiet_spells.load(Ordering::Relaxed) <= 2);
    }
}
