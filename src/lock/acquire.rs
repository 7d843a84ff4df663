//! A lock acquire that may be abandoned half-way (Ctrl-C in a blocking call, a cancelled
//! asyncio task) without leaving anything behind: it runs as a task of its own, and dropping
//! its handle before it finishes aborts the task (a waiting contender withdraws, e.g. its
//! ZooKeeper node is deleted) and, should the lock have been won in the meantime, releases it.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::driver::{DriverLock, Wait};
use crate::error::{Error, Result};
use crate::runtime;

pub struct Acquire {
    lock: Arc<dyn DriverLock>,
    task: Option<JoinHandle<Result<bool>>>,
}

impl Acquire {
    pub fn start(lock: Arc<dyn DriverLock>, wait: Wait, shared: bool) -> Acquire {
        let task_lock = lock.clone();
        let task = runtime::runtime().spawn(async move { task_lock.acquire(wait, shared).await });
        Acquire { lock, task: Some(task) }
    }

    /// The outcome, if it comes within `limit` (the acquire goes on otherwise).
    pub async fn finish_within(&mut self, limit: std::time::Duration) -> Option<Result<bool>> {
        let task = self.task.as_mut()?;
        let joined = tokio::time::timeout(limit, task).await.ok()?;
        self.task = None;
        Some(joined.map_err(|e| Error::Tooz(format!("lock wait failed: {e}"))).and_then(|r| r))
    }

    /// The outcome. Dropped before it completes (cancelled), the acquire is withdrawn.
    pub async fn finish(mut self) -> Result<bool> {
        let Some(task) = self.task.as_mut() else { return Err(Error::Tooz("acquire already finished".into())) };
        let joined = task.await;
        self.task = None;
        joined.map_err(|e| Error::Tooz(format!("lock wait failed: {e}")))?
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        let lock = self.lock.clone();
        // Not on a runtime of another (parent) process: `runtime()` gives this one's.
        runtime::runtime().spawn(async move {
            if let Ok(Ok(true)) = task.await {
                let _ = lock.release().await;
            }
        });
    }
}

/// An acquire a blocked caller's thread drives itself (`runtime::block_on`, a slice at a
/// time, so the caller can look for signals between slices): the lock's attempts, sleeps and
/// replies then happen on that thread (a redis reply read there, a file waiter asleep on the
/// release futex there), where a task would wake a runtime thread for each and hand its
/// outcome back. Dropped unfinished, the attempt is withdrawn as a task's abort would: the
/// future is dropped, inside the runtime.
pub struct AcquireHere {
    attempt: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool>> + Send>>>,
}

impl AcquireHere {
    pub fn start(lock: Arc<dyn DriverLock>, wait: Wait, shared: bool) -> AcquireHere {
        AcquireHere { attempt: Some(Box::pin(async move { lock.acquire(wait, shared).await })) }
    }

    /// The outcome, if it comes within `limit` (call from outside the runtime).
    pub fn finish_within(&mut self, limit: std::time::Duration) -> Option<Result<bool>> {
        let attempt = self.attempt.as_mut()?;
        // The timer is made inside the runtime.
        let outcome = runtime::block_on(async { tokio::time::timeout(limit, attempt).await }).ok()?;
        self.attempt = None;
        Some(outcome)
    }
}

impl Drop for AcquireHere {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            let _inside = runtime::runtime().enter();
            drop(attempt);
        }
    }
}
