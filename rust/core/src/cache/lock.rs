//! The shard lock: one atomic flag. Taking it is one compare-exchange and
//! releasing it a plain release store, so an uncontended lookup pays for one
//! locked instruction instead of two (a parking mutex also needs one to
//! release, to find out whether anyone is asleep on it). A waiter spins a
//! little, then yields its time slice. That suits the shards' critical
//! sections: a few dozen nanoseconds of table and list work that never
//! blocks, never allocates on the hit path and never calls out to code that
//! could take another lock.

use std::sync::atomic::{AtomicBool, Ordering};

pub struct RawSpinLock {
    locked: AtomicBool,
}

const SPINS_BEFORE_YIELD: u32 = 100;

impl RawSpinLock {
    #[cold]
    fn lock_contended(&self) {
        let mut spins = 0;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self.try_acquire() {
                return;
            }
        }
    }

    #[inline]
    fn try_acquire(&self) -> bool {
        self.locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

// SAFETY: `lock` and `try_lock` succeed only for the one thread whose
// compare-exchange moved `locked` from false to true (Acquire), and `unlock`,
// which the trait allows only to that holder, stores false (Release). So at
// most one thread holds the lock at a time, and everything the holder wrote
// happens-before whatever the next holder reads: the contract of `RawMutex`.
#[allow(unsafe_code)]
unsafe impl lock_api::RawMutex for RawSpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawSpinLock {
        locked: AtomicBool::new(false),
    };

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_acquire() {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.try_acquire()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

pub type SpinMutex<T> = lock_api::Mutex<RawSpinLock, T>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn excludes_concurrent_holders() {
        let counter = Arc::new(SpinMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        // A read-modify-write that loses updates without mutual exclusion.
                        let mut guard = counter.lock();
                        let seen = *guard;
                        std::hint::black_box(&seen);
                        *guard = seen + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*counter.lock(), 400_000);
    }
}
