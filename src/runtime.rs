//! The one tokio runtime of the process, safe across `os.fork()`.
//!
//! A forked child inherits the parent's memory but none of its threads, so the parent's
//! runtime is dead weight there. A `pthread_atfork` child hook bumps a generation counter;
//! the first use in the child builds a fresh runtime. The parent's runtime is leaked in the
//! child on purpose: dropping it would try to join threads that do not exist.

use std::future::Future;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

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
