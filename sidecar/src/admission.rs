//! Admission control: at most `workers` syntheses run at once, at most `max_queue` requests
//! wait for a worker (first come, first served), and any request beyond that is refused at
//! once instead of waiting without bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all synthesis workers are busy and the wait queue is full")]
pub struct QueueFull;

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    workers: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
}

/// A worker slot. The synthesis keeps it until its last sentence is done, also after the
/// HTTP request that asked for it went away.
#[derive(Debug)]
pub struct WorkerPermit {
    _permit: OwnedSemaphorePermit,
}

impl Drop for WorkerPermit {
    fn drop(&mut self) {
        metrics::worker_released();
    }
}

/// A place in the wait queue, given back when the request gets a worker or stops waiting
/// (client gone, deadline passed).
struct QueueSlot {
    waiting: Arc<AtomicUsize>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        metrics::queue_left();
    }
}

impl Admission {
    pub fn new(workers: usize, max_queue: usize) -> Self {
        Admission {
            workers: Arc::new(Semaphore::new(workers.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_queue,
        }
    }

    /// Waits for a worker if one is busy and the queue has room; refuses at once otherwise.
    /// Dropping the returned future leaves the queue.
    pub async fn admit(&self) -> Result<WorkerPermit, QueueFull> {
        if let Ok(permit) = Arc::clone(&self.workers).try_acquire_owned() {
            return Ok(Self::running(permit));
        }
        let slot = self.join_queue()?;
        // The semaphore is never closed, so acquiring only fails in theory; that case is
        // reported as a full queue rather than a panic.
        let permit = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|_| QueueFull)?;
        drop(slot);
        Ok(Self::running(permit))
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn join_queue(&self) -> Result<QueueSlot, QueueFull> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < self.max_queue).then_some(waiting + 1)
            })
            .map_err(|_| QueueFull)?;
        metrics::queue_entered();
        Ok(QueueSlot {
            waiting: Arc::clone(&self.waiting),
        })
    }

    fn running(permit: OwnedSemaphorePermit) -> WorkerPermit {
        metrics::worker_taken();
        WorkerPermit { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    #[tokio::test]
    async fn admits_up_to_workers_then_queues_then_refuses() {
        let admission = Admission::new(2, 1);
        let first = admission.admit().await.expect("first worker");
        let _second = admission.admit().await.expect("second worker");

        let queued = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await }
        });
        while admission.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.admit().await.unwrap_err(), QueueFull);

        drop(first);
        let third = queued
            .await
            .expect("task")
            .expect("queued request gets the freed worker");
        assert_eq!(admission.waiting(), 0);
        drop(third);
        let fourth = admission.admit().now_or_never();
        assert!(
            matches!(fourth, Some(Ok(_))),
            "a freed worker is taken without waiting"
        );
    }

    #[tokio::test]
    async fn zero_queue_refuses_as_soon_as_workers_are_busy() {
        let admission = Admission::new(1, 0);
        let _busy = admission.admit().await.expect("worker");
        assert_eq!(admission.admit().await.unwrap_err(), QueueFull);
        assert_eq!(admission.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        let admission = Admission::new(1, 1);
        let busy = admission.admit().await.expect("worker");
        let gave_up = tokio::time::timeout(Duration::from_millis(20), admission.admit()).await;
        assert!(
            gave_up.is_err(),
            "the wait must still be pending when the timeout fires"
        );
        assert_eq!(admission.waiting(), 0);

        drop(busy);
        let again = admission
            .admit()
            .await
            .expect("the freed worker is not held by the leaver");
        drop(again);
        assert!(matches!(admission.admit().now_or_never(), Some(Ok(_))));
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let admission = Admission::new(1, 2);
        let busy = admission.admit().await.expect("worker");
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for id in 0..2 {
            let waiter = admission.clone();
            let order_tx = order_tx.clone();
            tokio::spawn(async move {
                let permit = waiter.admit().await.expect("queued");
                order_tx.send(id).expect("receiver alive");
                drop(permit);
            });
            while admission.waiting() <= id {
                tokio::task::yield_now().await;
            }
        }
        drop(busy);
        assert_eq!(order_rx.recv().await, Some(0));
        assert_eq!(order_rx.recv().await, Some(1));
    }
}
