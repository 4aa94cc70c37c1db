//! When a queue worker fetches: on a notification for its queue, on a timer of our own (fast while the queue
//! is busy, slow while it is idle), and right after a fetch that came back full; never just because its task
//! woke.
//!
//! apalis's worker polls its backend each time anything wakes its task (every job that ends, its heartbeat)
//! and apalis-postgres fetches on every such poll while it holds no jobs (`PollWith` runs its strategy only for
//! its wake-ups, not as a gate), so most fetches found nothing: `orderflow dev` at 20 sagas/s made 33 fetches
//! per saga (12,047 for 360 sagas), each a transaction of three round trips, and PostgreSQL used 0.44 of a core
//! for 20 sagas/s; at 100/s 24,012 fetches for 2,300 sagas. [`Paced`] fetches only when there may be work.
//!
//! Notifications alone miss jobs (one that arrives while a fetch is in flight is consumed and starts no
//! other fetch), and apalis's `IntervalStrategy` does not re-arm itself after it fires: with its 1 s default that
//! wait was the tail of every step (`orderflow dev` at 100 sagas/s: per-step wait p99 790–970 ms). [`Ticker`]
//! re-arms at once, and ticks every [`BUSY_TICK`] while the queue handed out a job within the last
//! [`BUSY_FOR`], else every `ORDERFLOW_WORKER_POLL_MS`: an idle worker costs what it did.
//!
//! While a queue's jobs come at fewer than [`SMALL_FETCH`] per gap, a fetch that found some is followed by the
//! next no sooner than `ORDERFLOW_WORKER_FETCH_GAP_MS` (40 ms) after it ended: the jobs announced meanwhile are
//! fetched together and run as one batch. At a moderate rate a step's cost is mostly per batch, not per order
//! (`orderflow dev` at 100 sagas/s ran batches of about one order, and PostgreSQL spent 12.3–13.9 ms of CPU per
//! saga; with the gap 5.6–6.5 ms), and that CPU is what an order's creation waits behind. A queue whose last fetch
//! found nothing, or was longer ago than the gap, fetches at once: an order on an idle queue never waits.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_core::backend::{BackendConfig, WireFormatBackend};
use apalis_postgres::{PgPool, PgTask, Pubsub, queries};
use futures::future::BoxFuture;
use futures::{FutureExt, Sink, SinkExt, StreamExt};

/// The timer of a queue that is working.
pub const BUSY_TICK: Duration = Duration::from_millis(50);
/// How long after its last job a queue counts as working.
pub const BUSY_FOR: Duration = Duration::from_secs(2);
/// The fetch gap is for queues whose jobs arrive at fewer than this many per gap: their batches are small and pay
/// their fixed cost for few orders. A queue that is faster than that forms large enough batches by itself (jobs
/// gather while its batches run), and a wait would only add latency: at 500 sagas/s a gap after every fetch left
/// PostgreSQL's CPU per saga where it was and raised submit-to-end p99 from 0.87–0.94 s to 1.23–2.36 s.
pub const SMALL_FETCH: usize = 16;

/// Whether the fetch that found `found` jobs, `since_previous` after the previous fetch began, is followed by the
/// gap: it found some, and at the rate they came (`found` in `since_previous`) a gap would gather fewer than
/// [`SMALL_FETCH`].
fn gap_after(found: usize, since_previous: Duration, gap: Duration) -> bool {
    found > 0 && (found as f64) * gap.as_secs_f64() < (SMALL_FETCH as f64) * since_previous.as_secs_f64()
}

/// A fetch timer that re-arms itself: every [`BUSY_TICK`] while busy, every `idle` otherwise.
pub struct Ticker {
    idle: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Ticker {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle: idle.max(BUSY_TICK),
            sleep: None,
        }
    }

    fn interval(&self, busy: bool) -> Duration {
        if busy { BUSY_TICK } else { self.idle }
    }

    /// Ready when the tick is due; the next one is armed and polled at once, so that it wakes the task by itself.
    fn poll_tick(&mut self, cx: &mut Context<'_>, busy: bool) -> Poll<()> {
        let interval = self.interval(busy);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let mut next = Box::pin(tokio::time::sleep(interval));
        let _ = next.as_mut().poll(cx);
        self.sleep = Some(next);
        Poll::Ready(())
    }
}

/// A queue's backend that fetches only when there may be work: when its [`Ticker`] fires, when notifications for
/// its queue arrived (however many arrived meanwhile, one fetch: new orders and step batches announce their jobs,
/// `queue::announce`), and right after a fetch that came back full (it may have left jobs behind). It fetches
/// itself, with apalis-postgres's own query (`queries::fetch_next`: the claim by `get_jobs`), as one statement:
/// one round trip where apalis's fetch was three (begin, claim, commit). Everything else (registration,
/// heartbeats, what happens at close) is apalis's backend's, `B`. Jobs fetched and not yet handed
/// out when the worker stops stay claimed under its name: the shutdown hands them back
/// (`upkeep::release_jobs_of`), or the reconciler does for a worker generation that ended.
pub struct Paced<B> {
    backend: B,
    pool: PgPool,
    queue: String,
    config: apalis_postgres::Config,
    fetch_size: usize,
    ticker: Ticker,
    /// The queue's LISTEN connection (apalis's [`Pubsub`]); rebuilt at the next tick when it ends.
    notices: Option<Pubsub>,
    /// Fetch: something may be there.
    open: bool,
    fetch: Option<BoxFuture<'static, Result<Vec<PgTask>, apalis_postgres::Error>>>,
    fetched: VecDeque<PgTask>,
    /// A fetch failed: the worker ends (as apalis's backend ends it) and its supervisor starts another.
    failed: bool,
    last_job: Option<Instant>,
    /// `ORDERFLOW_WORKER_FETCH_GAP_MS`: the least time from a fetch that found jobs to the next, while they come
    /// slowly ([`gap_after`]).
    gap: Duration,
    /// When the last fetch began, and how long after the one before it (the gap until there is one): what it
    /// finds in that time is the rate jobs come at.
    fetch_started: Option<Instant>,
    since_previous: Duration,
    /// The gap after the last fetch, while it lasts; `None`: the next fetch may start at once.
    gap_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Paced<B> {
    /// `backend` serves `queue` (its `config`) from `pool`; fetches claim up to `fetch_size` jobs, and while jobs
    /// come slowly one that found some is followed by the next no sooner than `gap` after it ([`gap_after`]).
    pub fn new(
        backend: B,
        pool: PgPool,
        queue: &str,
        config: apalis_postgres::Config,
        fetch_size: usize,
        idle: Duration,
        gap: Duration,
    ) -> Self {
        Self {
            notices: Some(Pubsub::new(pool.clone(), queue.to_owned())),
            queue: queue.to_owned(),
            backend,
            pool,
            config,
            fetch_size: fetch_size.max(1),
            ticker: Ticker::new(idle),
            // The first poll fetches: jobs may be waiting from before this worker started.
            open: true,
            fetch: None,
            fetched: VecDeque::new(),
            failed: false,
            last_job: None,
            gap,
            fetch_started: None,
            since_previous: gap,
            gap_wait: None,
        }
    }

    /// Ready when a fetch may start: at once, or once the gap after the last fetch has passed (the wait wakes the
    /// task).
    fn poll_gap(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(wait) = &mut self.gap_wait
            && wait.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        self.gap_wait = None;
        Poll::Ready(())
    }

    /// Takes what woke the task: a tick or notifications open the way to one fetch.
    fn take_wakeups(&mut self, cx: &mut Context<'_>) {
        let busy = self.last_job.is_some_and(|at| at.elapsed() < BUSY_FOR);
        if self.ticker.poll_tick(cx, busy).is_ready() {
            self.open = true;
            if self.notices.is_none() {
                self.notices = Some(Pubsub::new(self.pool.clone(), self.queue.clone()));
            }
        }
        while let Some(notices) = &mut self.notices {
            match notices.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => self.open = true,
                Poll::Ready(None) => self.notices = None,
                Poll::Pending => break,
            }
        }
    }

    fn start_fetch(&mut self, worker: &WorkerContext) {
        let now = Instant::now();
        if let Some(previous) = self.fetch_started.replace(now) {
            self.since_previous = now - previous;
        }
        let (pool, config, worker) = (self.pool.clone(), self.config.clone(), worker.clone());
        self.fetch = Some(
            async move {
                let mut conn = pool.acquire().await?;
                queries::fetch_next(&mut *conn, &config, &worker).await
            }
            .boxed(),
        );
    }
}

impl<B> Backend for Paced<B>
where
    B: Backend<Task = PgTask, Error = apalis_postgres::Error>,
{
    type Task = PgTask;
    type Error = apalis_postgres::Error;

    fn poll_ready(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.backend.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        self.take_wakeups(cx);
        loop {
            if let Some(task) = self.fetched.pop_front() {
                self.last_job = Some(Instant::now());
                return Poll::Ready(Some(Ok(task)));
            }
            if let Some(fetch) = &mut self.fetch {
                match fetch.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(tasks)) => {
                        self.fetch = None;
                        // A full fetch may have left jobs behind: fetch again once these are handed out. After
                        // one that found a few, the jobs announced in the next `gap` wait to be fetched together.
                        let full = tasks.len() >= self.fetch_size;
                        self.open |= full;
                        self.gap_wait = (!full && gap_after(tasks.len(), self.since_previous, self.gap))
                            .then(|| Box::pin(tokio::time::sleep(self.gap)));
                        self.fetched.extend(tasks);
                    }
                    Poll::Ready(Err(error)) => {
                        self.fetch = None;
                        self.failed = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                continue;
            }
            if !self.open || self.poll_gap(cx).is_pending() {
                return Poll::Pending;
            }
            self.open = false;
            self.start_fetch(worker);
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>, worker: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.backend.poll_close(cx, worker)
    }
}

apalis_core::delegate_sink!(Paced<B>, backend);
apalis_core::delegate_codec!(Paced<B>, backend);
apalis_core::delegate_deref!(Paced<B>, backend);
apalis_core::delegate_config!(Paced<B>, backend);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_had_a_job_lately_ticks_fast_and_an_idle_one_at_its_poll_interval() {
        let ticker = Ticker::new(Duration::from_secs(1));
        assert_eq!(ticker.interval(true), BUSY_TICK);
        assert_eq!(ticker.interval(false), Duration::from_secs(1));
        assert_eq!(Ticker::new(Duration::from_millis(10)).interval(false), BUSY_TICK);
    }

    #[test]
    fn the_gap_follows_a_fetch_of_a_slow_queue_only() {
        let gap = Duration::from_millis(40);
        let ms = Duration::from_millis;
        // 100 jobs/s: 4 in a gap, 1 after an idle spell.
        assert!(gap_after(4, ms(40), gap));
        assert!(gap_after(1, ms(1_000), gap));
        // Nothing found: nothing to gather for.
        assert!(!gap_after(0, ms(40), gap));
        // 500 jobs/s, however few one fetch found: 20 in a gap, or 2 in 4 ms.
        assert!(!gap_after(20, ms(40), gap));
        assert!(!gap_after(2, ms(4), gap));
        // The bound: 16 per gap.
        assert!(gap_after(15, gap, gap));
        assert!(!gap_after(16, gap, gap));
    }

    #[tokio::test(start_paused = true)]
    async fn after_it_fired_the_ticker_wakes_its_task_by_itself() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Wake, Waker};
        struct Wakes(AtomicUsize);
        impl Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut ticker = Ticker::new(Duration::from_secs(1));
        assert!(ticker.poll_tick(&mut cx, false).is_pending());
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(ticker.poll_tick(&mut cx, false), Poll::Ready(()));
        // Not polled again: the next tick wakes the task anyway (apalis's interval did not).
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
    }
}
