//! The one lock the engine uses, chosen by the embedder: [`Kho`](crate::Kho) is generic over a
//! [`lock_api::RawMutex`], so a kernel can plug in its own (a spin lock with interrupts or
//! preemption off, say). The default, [`DefaultRawMutex`], is `spin`'s test-and-set lock: the
//! embedding kernel may have no scheduler yet when it preserves memory. Under `--cfg loom` the
//! lock is loom's mutex whatever the parameter, so the outgoing side's locking can be
//! model-checked exhaustively.
//!
//! Why test-and-set and not a ticket lock by default: under heavy contention a `finalize` can
//! wait behind a stream of preserves. A ticket lock fixes that in a kernel (preemption off
//! while held) but, measured here, made the threaded tests 90x slower in user space with more
//! threads than cores (a descheduled ticket holder stalls every waiter).
//!
//! The platform's allocator is called with the lock held (preserve allocates a bitmap page on
//! first use, finalize allocates the whole map): the allocation and the state change it
//! serves must be one step, or a concurrent unpreserve could free the bitmap between them.
//! The platform's `MetaAlloc` must therefore not take a lock that is held around calls into
//! the engine.

/// The lock used when the embedder names none: `spin`'s test-and-set mutex.
pub type DefaultRawMutex = spin::mutex::SpinMutex<()>;

#[cfg(not(loom))]
pub(crate) type Lock<R, T> = lock_api::Mutex<R, T>;
#[cfg(not(loom))]
pub(crate) type Guard<'a, R, T> = lock_api::MutexGuard<'a, R, T>;

#[cfg(loom)]
pub(crate) use loom_lock::{Guard, Lock};

#[cfg(loom)]
mod loom_lock {
    use core::marker::PhantomData;
    use core::ops::{Deref, DerefMut};

    /// loom's mutex behind the `lock_api` API the engine uses; `R` is not used.
    #[derive(Debug)]
    pub(crate) struct Lock<R, T>(loom::sync::Mutex<T>, PhantomData<fn() -> R>);
    /// loom's guard, typed like `lock_api::MutexGuard`.
    pub(crate) struct Guard<'a, R, T>(loom::sync::MutexGuard<'a, T>, PhantomData<fn() -> R>);

    impl<R, T> Lock<R, T> {
        pub(crate) fn new(v: T) -> Self {
            Self(loom::sync::Mutex::new(v), PhantomData)
        }
        pub(crate) fn lock(&self) -> Guard<'_, R, T> {
            // A poisoned lock means a panic already happened under the model checker.
            Guard(self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner), PhantomData)
        }
    }
    impl<R, T> Deref for Guard<'_, R, T> {
        type Target = T;
        fn deref(&self) -> &T {
            &self.0
        }
    }
    impl<R, T> DerefMut for Guard<'_, R, T> {
        fn deref_mut(&mut self) -> &mut T {
            &mut self.0
        }
    }
}
