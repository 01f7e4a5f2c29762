//! The one lock the engine uses. A spin lock in `no_std` builds (the embedding kernel may
//! have no scheduler yet when it preserves memory); under `--cfg loom` it is loom's mutex, so
//! the outgoing side's locking can be model-checked exhaustively.
//!
//! It is a test-and-set lock, not a fair one: under heavy contention a `finalize` can wait
//! behind a stream of preserves. A ticket lock fixes that in a kernel (preemption off while
//! held) but, measured here, made the threaded tests 90x slower in user space with more
//! threads than cores (a descheduled ticket holder stalls every waiter), so it is not used.

#[cfg(not(loom))]
pub(crate) use spin::{Mutex as Lock, MutexGuard as Guard};

#[cfg(loom)]
pub(crate) use loom_lock::{Guard, Lock};

#[cfg(loom)]
mod loom_lock {
    /// loom's mutex behind the `spin` API the engine uses.
    #[derive(Debug)]
    pub(crate) struct Lock<T>(loom::sync::Mutex<T>);
    pub(crate) type Guard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Lock<T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> Guard<'_, T> {
            // A poisoned lock means a panic already happened under the model checker.
            self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}
