//! Poison-tolerant locking, the one way ember takes its locks, and [`Published`] values that
//! a busy thread hands to readers without making them wait for its work.
//!
//! A thread that panics while holding a lock poisons it. Every state ember guards is kept
//! consistent between accesses (a device between two register accesses, a queue between two
//! batches, a gate between two transitions), so the state is still good: recovering it keeps
//! one failed thread from taking the others, and the VM's orderly shutdown, down with it.

use std::sync::{
    Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, WaitTimeoutResult,
};
use std::time::Duration;

/// Locks `mutex`, recovering it if a thread panicked while holding it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` with `guard`, recovering the lock as [`lock`] does.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits on `condvar` with `guard` for at most `limit`, recovering the lock as [`lock`] does.
pub fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    limit: Duration,
) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
    condvar
        .wait_timeout(guard, limit)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `rwlock` for reading, recovering it as [`lock`] does.
pub fn read<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes `rwlock` for writing, recovering it as [`lock`] does.
pub fn write<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A value one thread publishes and others read without waiting for that thread's work: the
/// lock inside is held only to copy the value in or out, never across I/O. Devices publish
/// their counters this way after each batch, so the metrics never wait behind a batch of disk
/// or network I/O.
#[derive(Debug, Default)]
pub struct Published<T>(Mutex<T>);

impl<T: Copy> Published<T> {
    /// Replaces the value readers see.
    pub fn publish(&self, value: T) {
        *lock(&self.0) = value;
    }

    /// The value last published.
    pub fn get(&self) -> T {
        *lock(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panicking_thread_is_still_usable() {
        let mutex = Arc::new(Mutex::new(1));
        let rwlock = Arc::new(RwLock::new(1));
        let (m, r) = (mutex.clone(), rwlock.clone());
        let _ = std::thread::spawn(move || {
            let _held = (m.lock().unwrap(), r.write().unwrap());
            panic!("poison both");
        })
        .join();
        assert!(mutex.is_poisoned() && rwlock.is_poisoned());
        *lock(&mutex) += 1;
        *write(&rwlock) += 1;
        assert_eq!((*lock(&mutex), *read(&rwlock)), (2, 2));
        let (guard, timeout) = wait_timeout(&Condvar::new(), lock(&mutex), Duration::ZERO);
        assert!(timeout.timed_out());
        assert_eq!(*guard, 2);
    }
}
