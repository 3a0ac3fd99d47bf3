//! The outbox's database thread: one OS thread that opens the database and runs every
//! transaction, one at a time, for the writer task.
//!
//! Tokio's blocking pool ran them before, on whichever of its threads was idle. Under
//! load the transactions then spread over three threads, and each kept its own heap of
//! the allocator's pages (the rows read, SQLite's page cache, the statements): about
//! 1.5 MiB of the daemon's peak RSS in the MQTT round-trip benchmark. One thread keeps
//! them in one heap, and keeps SQLite's allocations in one glibc arena (`cmd::runtime`).
//! Tokio's blocking pool still waits for each result (a waiting thread allocates nothing),
//! and stays free for what else needs it (name lookups): a slow lookup never delays a
//! commit, nor a slow commit a lookup.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

/// A job for the thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread's handle. It stops when the handle is dropped, after the job it runs.
#[derive(Debug)]
pub(super) struct DbThread {
    jobs: mpsc::SyncSender<Job>,
}

/// The thread is gone (a job panicked), or a job was given while another was waiting.
#[derive(Debug, thiserror::Error)]
#[error("the outbox database thread is gone")]
pub(super) struct Gone;

impl DbThread {
    /// Starts the thread.
    pub(super) fn spawn() -> std::io::Result<Self> {
        // The writer runs one transaction at a time: one job waiting is the most there is.
        let (jobs, waiting) = mpsc::sync_channel::<Job>(1);
        std::thread::Builder::new()
            .name("outbox-db".into())
            .spawn(move || {
                while let Ok(job) = waiting.recv() {
                    job();
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the thread: the future resolves to its result, or to [`Gone`].
    ///
    /// The wait for the result is itself a blocking task, so tokio counts the job as work
    /// in progress: a paused clock (the tests) does not jump ahead while it runs. The
    /// waiting thread allocates nothing.
    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Running<T> {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        // A job not taken (the thread is gone) is dropped with its sender.
        let taken = self.jobs.try_send(job).is_ok();
        Running(tokio::task::spawn_blocking(move || {
            taken.then(|| result.recv().ok()).flatten()
        }))
    }
}

/// A job given to the thread: resolves to its result, or to [`Gone`].
#[derive(Debug)]
pub(super) struct Running<T>(tokio::task::JoinHandle<Option<T>>);

impl<T> Future for Running<T> {
    type Output = Result<T, Gone>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.ok().flatten().ok_or(Gone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_one_at_a_time_on_one_thread() {
        let thread = DbThread::spawn().unwrap();
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

    #[tokio::test]
    async fn a_job_that_panics_is_reported_and_the_thread_is_gone() {
        let thread = DbThread::spawn().unwrap();
        let panicked = thread.run(|| -> u32 { panic!("a job failed") }).await;
        assert!(panicked.is_err());
        // The thread ended with the panic: later jobs are reported, not lost silently.
        let later = thread.run(|| 1).await;
        assert!(later.is_err());
    }
}
