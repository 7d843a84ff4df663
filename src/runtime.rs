//! The one tokio runtime of the process, safe across `os.fork()`.
//!
//! A forked child inherits the parent's memory but none of its threads, so the parent's
//! runtime is dead weight there. A `pthread_atfork` child hook bumps a generation counter;
//! the first use in the child builds a fresh runtime. The parent's runtime is leaked in the
//! child on purpose: dropping it would try to join threads that do not exist.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Wake, Waker};

use tokio::runtime::{Builder, Runtime};

static GENERATION: AtomicU64 = AtomicU64::new(0);
static CURRENT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static HOOK: Once = Once::new();

struct Slot {
    generation: u64,
    runtime: Runtime,
}

extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// How many times this process image has been forked into (0 in the original process).
pub fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

pub fn runtime() -> &'static Runtime {
    HOOK.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    });
    let generation = generation();
    let cur = CURRENT.load(Ordering::Acquire);
    if !cur.is_null() {
        // SAFETY: slots are leaked, never freed.
        let slot = unsafe { &*cur };
        if slot.generation == generation {
            return &slot.runtime;
        }
    }
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tooz-runtime")
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime");
    let fresh = Box::into_raw(Box::new(Slot { generation, runtime }));
    match CURRENT.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => unsafe { &(*fresh).runtime },
        Err(winner) => {
            // Another thread installed one first; ours was never used. Leak it rather than
            // drop a runtime from a context that might be async.
            unsafe { &(*winner).runtime }
        }
    }
}

thread_local! {
    static CALLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a future to completion from a thread that is not a runtime worker.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Caller(bool);
    impl Drop for Caller {
        fn drop(&mut self) {
            CALLER.with(|c| c.set(self.0));
        }
    }
    let _restore = Caller(CALLER.with(|c| c.replace(true)));
    runtime().block_on(fut)
}

/// Whether this thread is a caller's, waiting in [`block_on`] for the future it polls: a
/// client may then wait for a reply in a blocking system call (the kernel wakes this thread
/// when the bytes arrive, without a hop through a runtime worker); on a worker it must not.
pub fn on_caller_thread() -> bool {
    CALLER.with(|c| c.get())
}

/// A task to run to completion on the runtime.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls `task` once on the calling thread, so that a call needing no I/O wait (most of a
/// local backend's) completes without a hand-off to a runtime thread. A task still pending
/// moves to the runtime at its first wake-up (its reply or timer is ready), not before:
/// spawning it at once would wake a runtime thread only to poll it, find it still waiting and
/// park again, once per call.
pub fn run_here_then_spawn(mut task: Task) {
    let rt = runtime();
    let parked = Arc::new(Parked { slot: Mutex::new((None, false)), handle: rt.handle().clone() });
    let waker = Waker::from(parked.clone());
    let ready = {
        let _context = rt.enter();
        task.as_mut().poll(&mut Context::from_waker(&waker)).is_ready()
    };
    if ready {
        return;
    }
    let woken_meanwhile = {
        let mut slot = parked.slot.lock().unwrap_or_else(|p| p.into_inner());
        if slot.1 {
            Some(task)
        } else {
            slot.0 = Some(task);
            None
        }
    };
    if let Some(task) = woken_meanwhile {
        rt.spawn(task);
    }
}

/// A task polled once off the runtime, waiting for its first wake-up: `(task, woken)`. The
/// runtime's own polls register the runtime's waker; a later wake-up of this one finds the
/// slot empty and does nothing.
struct Parked {
    slot: Mutex<(Option<Task>, bool)>,
    handle: tokio::runtime::Handle,
}

impl Wake for Parked {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            slot.1 = true;
            slot.0.take()
        };
        if let Some(task) = task {
            self.handle.spawn(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::task::Poll;
    use std::time::Duration;

    #[test]
    fn a_task_that_needs_no_wait_runs_on_the_calling_thread() {
        let here = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move { tx.send(std::thread::current().id()).unwrap() }));
        assert_eq!(rx.try_recv().unwrap(), here);
    }

    #[test]
    fn a_waiting_task_runs_on_when_woken_from_any_thread() {
        let (wake_tx, wake_rx) = tokio::sync::oneshot::channel::<u32>();
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move { tx.send(wake_rx.await.unwrap() + 1).unwrap() }));
        assert!(rx.try_recv().is_err());
        std::thread::spawn(move || wake_tx.send(41).unwrap()).join().unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 42);
    }

    #[test]
    fn a_task_woken_during_its_first_poll_is_not_lost() {
        let (tx, rx) = mpsc::channel();
        let mut first = true;
        let wakes_itself = std::future::poll_fn(move |cx| {
            if std::mem::take(&mut first) {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        run_here_then_spawn(Box::pin(async move {
            wakes_itself.await;
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn a_timer_set_on_the_calling_thread_fires_on_the_runtime() {
        let (tx, rx) = mpsc::channel();
        run_here_then_spawn(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(()).unwrap();
        }));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
