//! The sidecar's scheduler: sentences, not requests, are the unit of work, and the next free
//! worker goes to the tenant with the smallest share of work done so far.
//!
//! A request is admitted once (a [`Ticket`]: at most `workers + max_queue` requests are in
//! progress, beyond that the answer is `QueueFull` at once) and then asks for one [`Turn`] per
//! sentence. A turn resolves to a [`Lease`] on one worker, which its holder keeps for exactly
//! one model run and gives back by dropping it, on every path (success, error, cancel, panic).
//! The worker's index also names the ONNX Runtime session it runs on, so the lease is the
//! only guard around a session.
//!
//! When a worker is idle, a request's next sentence takes it at once, so a lone request runs
//! its sentences in parallel. When none is, the freed worker goes to the waiting tenant whose
//! virtual start is the least (start-time fair queueing): each tenant's finish tag advances
//! by a sentence's predicted audio seconds divided by the tenant's plan weight, and a tenant
//! that was idle starts at the current virtual time, so it neither banks credit while idle nor
//! waits behind another tenant's backlog. Within one tenant, sentences wait in arrival order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all synthesis workers are busy and the wait queue is full")]
pub struct QueueFull;

/// Least cost of one sentence, so that an empty or tiny one still advances its tenant.
const MIN_SENTENCE_COST: f64 = 0.01;

/// Relative shares of plans: a tenant on a plan of weight 4 gets four sentences scheduled for
/// every one of a tenant of weight 1 while both wait. A plan not listed has weight 1.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanWeights(HashMap<String, f64>);

impl PlanWeights {
    pub fn weight(&self, plan: Option<&str>) -> f64 {
        plan.and_then(|plan| self.0.get(plan))
            .copied()
            .unwrap_or(1.0)
    }
}

impl Default for PlanWeights {
    fn default() -> Self {
        "free=1,pro=4".parse().expect("the default weights parse")
    }
}

impl std::fmt::Display for PlanWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut plans: Vec<_> = self.0.iter().collect();
        plans.sort_by(|a, b| a.0.cmp(b.0));
        let plans: Vec<String> = plans
            .iter()
            .map(|(plan, w)| format!("{plan}={w}"))
            .collect();
        f.write_str(&plans.join(","))
    }
}

impl FromStr for PlanWeights {
    type Err = String;

    /// `plan=weight,plan=weight`, weights positive and finite; an empty string is no weights.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = HashMap::new();
        for entry in s
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let (plan, weight) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not plan=weight"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("the weight of {plan:?} is not a number"))?;
            if !(weight.is_finite() && weight > 0.0) {
                return Err(format!("the weight of {plan:?} must be positive"));
            }
            weights.insert(plan.trim().to_string(), weight);
        }
        Ok(PlanWeights(weights))
    }
}

/// Who a request is scheduled for, and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    pub tenant: String,
    pub weight: f64,
}

/// Shared by every request; cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    workers: usize,
    max_requests: usize,
}

#[derive(Debug)]
struct State {
    idle_workers: Vec<usize>,
    requests: usize,
    flows: HashMap<String, Flow>,
    virtual_time: f64,
    /// Sentences started since the start: a clock that counts work, not time.
    started: u64,
    next_waiter: u64,
}

/// One tenant's place in the fair queue.
#[derive(Debug)]
struct Flow {
    finish: f64,
    weight: f64,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    order: u64,
    cost: f64,
    reply: oneshot::Sender<Lease>,
}

impl Scheduler {
    pub fn new(workers: usize, max_queue: usize) -> Scheduler {
        let workers = workers.max(1);
        Scheduler {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    idle_workers: (0..workers).rev().collect(),
                    requests: 0,
                    flows: HashMap::new(),
                    virtual_time: 0.0,
                    started: 0,
                    next_waiter: 0,
                }),
                workers,
                max_requests: workers + max_queue,
            }),
        }
    }

    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Admits a request for `share`, or refuses it at once when `workers + max_queue` requests
    /// are already in progress. The ticket counts as queued until it [`begin`](Ticket::begin)s.
    pub fn admit(&self, share: Share) -> Result<Ticket, QueueFull> {
        let mut state = self.shared.lock();
        if state.requests >= self.shared.max_requests {
            return Err(QueueFull);
        }
        state.requests += 1;
        metrics::request_admitted();
        metrics::queue_entered();
        Ok(Ticket {
            shared: Arc::clone(&self.shared),
            share,
            admitted_at: state.started,
            queued: true,
        })
    }

    /// Requests in progress (admitted, not yet finished).
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Workers running a sentence now.
    pub fn busy_workers(&self) -> usize {
        self.shared.workers - self.shared.lock().idle_workers.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `worker` to the next waiter, or makes it idle.
    fn release(self: &Arc<Self>, worker: usize) {
        loop {
            let (reply, started) = {
                let mut state = self.lock();
                match state.next_waiter() {
                    Some(reply) => (reply, state.started),
                    None => {
                        state.idle_workers.push(worker);
                        metrics::worker_released();
                        return;
                    }
                }
            };
            let lease = Lease {
                shared: Some(Arc::clone(self)),
                worker,
                started,
            };
            match reply.send(lease) {
                Ok(()) => return,
                // The waiter gave up between the check and the send: the next one gets it.
                Err(mut lease) => lease.shared = None,
            }
        }
    }
}

impl State {
    /// Charges a sentence of `cost` to `flow` and advances the clocks.
    fn start_sentence(&mut self, tenant: &str, cost: f64) {
        let virtual_time = self.virtual_time;
        if let Some(flow) = self.flows.get_mut(tenant) {
            let start = flow.finish.max(virtual_time);
            flow.finish = start + cost.max(MIN_SENTENCE_COST) / flow.weight;
            self.virtual_time = start;
        }
        self.started += 1;
    }

    /// The reply channel of the waiter to serve next, already charged; `None` if none waits.
    fn next_waiter(&mut self) -> Option<oneshot::Sender<Lease>> {
        let virtual_time = self.virtual_time;
        for flow in self.flows.values_mut() {
            while flow.waiters.front().is_some_and(|w| w.reply.is_closed()) {
                flow.waiters.pop_front();
            }
        }
        let tenant = self
            .flows
            .iter()
            .filter_map(|(tenant, flow)| {
                let front = flow.waiters.front()?;
                Some((flow.finish.max(virtual_time), front.order, tenant))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
            .map(|(_, _, tenant)| tenant.clone());
        let Some(tenant) = tenant else {
            self.forget_idle_flows();
            return None;
        };
        let waiter = self.flows.get_mut(&tenant)?.waiters.pop_front()?;
        self.start_sentence(&tenant, waiter.cost);
        self.forget_idle_flows();
        Some(waiter.reply)
    }

    /// A tenant with nothing waiting and no work ahead of the clock would start at the
    /// virtual time anyway: its entry carries nothing.
    fn forget_idle_flows(&mut self) {
        let virtual_time = self.virtual_time;
        self.flows
            .retain(|_, flow| !flow.waiters.is_empty() || flow.finish > virtual_time);
    }
}

/// An admitted request; dropping it ends the request's place in the scheduler.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    share: Share,
    admitted_at: u64,
    queued: bool,
}

impl Ticket {
    /// Workers of the scheduler: the most sentences of one request worth running at once.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Asks for a worker for one sentence predicted to make `cost` audio seconds. Dropping the
    /// turn before it resolves gives up the place.
    pub fn turn(&mut self, cost: f64) -> Turn {
        let mut state = self.shared.lock();
        let virtual_time = state.virtual_time;
        let flow = state
            .flows
            .entry(self.share.tenant.clone())
            .or_insert_with(|| Flow {
                finish: virtual_time,
                weight: self.share.weight,
                waiters: VecDeque::new(),
            });
        flow.weight = self.share.weight;
        if let Some(worker) = state.idle_workers.pop() {
            metrics::worker_taken();
            state.start_sentence(&self.share.tenant, cost);
            return Turn(TurnState::Ready(Some(Lease {
                shared: Some(Arc::clone(&self.shared)),
                worker,
                started: state.started,
            })));
        }
        let (reply, receiver) = oneshot::channel();
        let order = state.next_waiter;
        state.next_waiter += 1;
        state
            .flows
            .get_mut(&self.share.tenant)
            .expect("the flow was just inserted")
            .waiters
            .push_back(Waiter { order, cost, reply });
        Turn(TurnState::Waiting {
            receiver,
            _scheduler: Arc::clone(&self.shared),
        })
    }

    /// Marks the request as started on `lease`, its first, and returns the sentences of other
    /// requests that started after it was admitted and before it: its wait, counted in work.
    pub fn begin(&mut self, lease: &Lease) -> u64 {
        if std::mem::take(&mut self.queued) {
            metrics::queue_left();
        }
        lease.started.saturating_sub(self.admitted_at + 1)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued {
            metrics::queue_left();
        }
        self.shared.lock().requests -= 1;
        metrics::request_finished();
    }
}

/// A worker being waited for.
#[derive(Debug)]
pub struct Turn(TurnState);

#[derive(Debug)]
enum TurnState {
    Ready(Option<Lease>),
    /// The scheduler's state is kept alive with the waiter, so its sender is only dropped
    /// once this receiver is.
    Waiting {
        receiver: oneshot::Receiver<Lease>,
        _scheduler: Arc<Shared>,
    },
}

impl Future for Turn {
    type Output = Lease;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Lease> {
        match &mut self.get_mut().0 {
            TurnState::Ready(lease) => Poll::Ready(lease.take().expect("a turn resolves once")),
            TurnState::Waiting { receiver, .. } => Pin::new(receiver)
                .poll(cx)
                .map(|lease| lease.expect("the scheduler answers every waiter it keeps")),
        }
    }
}

/// One worker, for one model run; given back when dropped.
#[derive(Debug)]
pub struct Lease {
    shared: Option<Arc<Shared>>,
    worker: usize,
    started: u64,
}

impl Lease {
    /// The worker's index, below `Scheduler::workers`: the session it runs on.
    pub fn worker(&self) -> usize {
        self.worker
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.release(self.worker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn share(tenant: &str, weight: f64) -> Share {
        Share {
            tenant: tenant.into(),
            weight,
        }
    }

    #[tokio::test]
    async fn idle_workers_are_taken_at_once_and_given_back_on_drop() {
        let scheduler = Scheduler::new(2, 0);
        let mut ticket = scheduler.admit(share("a", 1.0)).unwrap();
        let first = ticket.turn(1.0).now_or_never().expect("idle worker");
        let second = ticket.turn(1.0).now_or_never().expect("idle worker");
        assert_ne!(first.worker(), second.worker());
        assert_eq!(scheduler.busy_workers(), 2);
        let mut third = ticket.turn(1.0);
        assert!((&mut third).now_or_never().is_none(), "no worker is idle");
        let worker = first.worker();
        drop(first);
        let third = third
            .now_or_never()
            .expect("the freed worker is handed over");
        assert_eq!(third.worker(), worker);
        drop((second, third));
        assert_eq!(scheduler.busy_workers(), 0);
    }

    #[test]
    fn requests_beyond_workers_and_queue_are_refused() {
        let scheduler = Scheduler::new(1, 1);
        let a = scheduler.admit(share("a", 1.0)).unwrap();
        let _b = scheduler.admit(share("b", 1.0)).unwrap();
        assert_eq!(scheduler.admit(share("c", 1.0)).unwrap_err(), QueueFull);
        drop(a);
        assert!(scheduler.admit(share("c", 1.0)).is_ok());
        assert_eq!(scheduler.requests(), 1);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_hold_the_worker() {
        let scheduler = Scheduler::new(1, 2);
        let mut a = scheduler.admit(share("a", 1.0)).unwrap();
        let mut b = scheduler.admit(share("b", 1.0)).unwrap();
        let running = a.turn(1.0).now_or_never().unwrap();
        let gave_up = b.turn(1.0);
        let mut next = a.turn(1.0);
        drop(gave_up);
        drop(running);
        assert!((&mut next).now_or_never().is_some());
        drop(next);
        assert_eq!(scheduler.busy_workers(), 0);
    }

    #[tokio::test]
    async fn a_lease_is_given_back_when_its_holder_panics() {
        let scheduler = Scheduler::new(1, 0);
        let mut ticket = scheduler.admit(share("a", 1.0)).unwrap();
        let lease = ticket.turn(1.0).now_or_never().unwrap();
        let outcome = tokio::task::spawn_blocking(move || {
            let _lease = lease;
            panic!("a model run panicked");
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(scheduler.busy_workers(), 0);
        drop(ticket);
        assert_eq!(scheduler.requests(), 0);
    }

    /// Tenant `a` keeps eight sentences waiting; `b` arrives later with one. Served by arrival
    /// `b` would wait for all eight; fairly, it is next.
    #[tokio::test]
    async fn a_newcomer_is_served_before_a_backlog() {
        let scheduler = Scheduler::new(1, 16);
        let mut a = scheduler.admit(share("a", 1.0)).unwrap();
        let running = a.turn(3.0).now_or_never().unwrap();
        let backlog: Vec<Turn> = (0..8).map(|_| a.turn(3.0)).collect();
        let mut b = scheduler.admit(share("b", 1.0)).unwrap();
        let mut short = b.turn(1.0);
        drop(running);
        let lease = (&mut short).now_or_never().expect("b is served first");
        assert_eq!(b.begin(&lease), 0);
        drop(backlog);
    }

    /// While both wait, a tenant of weight 3 gets three sentences for each of weight 1.
    #[tokio::test]
    async fn waiting_tenants_share_by_weight() {
        let scheduler = Scheduler::new(1, 16);
        let mut holder = scheduler.admit(share("holder", 1.0)).unwrap();
        let running = holder.turn(1.0).now_or_never().unwrap();
        let mut free = scheduler.admit(share("free", 1.0)).unwrap();
        let mut pro = scheduler.admit(share("pro", 3.0)).unwrap();
        let mut turns: Vec<(&str, Turn)> = Vec::new();
        for _ in 0..8 {
            turns.push(("free", free.turn(1.0)));
            turns.push(("pro", pro.turn(1.0)));
        }
        drop(running);
        let mut order = Vec::new();
        for _ in 0..8 {
            let (index, lease) = turns
                .iter_mut()
                .enumerate()
                .find_map(|(i, (_, turn))| turn.now_or_never().map(|lease| (i, lease)))
                .expect("one turn holds the worker");
            order.push(turns.remove(index).0);
            drop(lease);
        }
        let pro_served = order.iter().filter(|tenant| **tenant == "pro").count();
        assert_eq!(pro_served, 6, "order: {order:?}");
    }

    #[test]
    fn weights_parse_and_default_to_one() {
        let weights: PlanWeights = "free=1, pro=4.5".parse().unwrap();
        assert_eq!(weights.weight(Some("pro")), 4.5);
        assert_eq!(weights.weight(Some("gold")), 1.0);
        assert_eq!(weights.weight(None), 1.0);
        assert!("pro".parse::<PlanWeights>().is_err());
        assert!("pro=0".parse::<PlanWeights>().is_err());
        assert!("pro=inf".parse::<PlanWeights>().is_err());
        assert_eq!("".parse::<PlanWeights>().unwrap().weight(Some("free")), 1.0);
    }
}
