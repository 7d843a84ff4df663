//! A bounded hand-off queue that belongs to one process image: after `fork()` the child gets
//! a fresh, empty one (the parent's lock may have been held by a thread the child does not
//! have). Producers never wait but for the queue's own short lock; one consumer thread waits
//! for items. Used for log records (`log.rs`) and for the binding's Python calls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::runtime;

pub struct Queue<T> {
    generation: u64,
    items: Mutex<VecDeque<T>>,
    ready: Condvar,
}

impl<T> Queue<T> {
    /// Adds `item`; beyond `max` queued items the oldest is dropped (and returned).
    pub fn push(&self, item: T, max: usize) -> Option<T> {
        let dropped = {
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = if items.len() >= max { items.pop_front() } else { None };
            items.push_back(item);
            dropped
        };
        self.ready.notify_one();
        dropped
    }

    /// The next item, waiting at most `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Option<T> {
        let items = self.items.lock().unwrap_or_else(|p| p.into_inner());
        let (mut items, _) = self.ready.wait_timeout_while(items, timeout, |i| i.is_empty()).unwrap_or_else(|p| p.into_inner());
        items.pop_front()
    }
}

/// One [`Queue`] per fork generation, made on first use; old ones are leaked on purpose.
pub struct ForkLocal<T> {
    current: AtomicPtr<Queue<T>>,
}

impl<T> ForkLocal<T> {
    pub const fn new() -> Self {
        ForkLocal { current: AtomicPtr::new(std::ptr::null_mut()) }
    }

    pub fn get(&self) -> &Queue<T> {
        let generation = runtime::generation();
        let cur = self.current.load(Ordering::Acquire);
        // SAFETY: queues are leaked, never freed.
        if let Some(q) = unsafe { cur.as_ref() } {
            if q.generation == generation {
                return q;
            }
        }
        let fresh = Box::into_raw(Box::new(Queue { generation, items: Mutex::new(VecDeque::new()), ready: Condvar::new() }));
        match self.current.compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => unsafe { &*fresh },
            Err(winner) => unsafe { &*winner },
        }
    }
}

impl<T> Default for ForkLocal<T> {
    fn default() -> Self {
        Self::new()
    }
}
