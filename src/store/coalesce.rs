//! Coalescing (SPEC S2): REGISTERs for different AoRs that are waiting at the same moment share
//! one transaction — one lock statement, one read, one multi-row statement per kind of write,
//! one commit — instead of paying those round trips each. A queue feeds a few workers; each
//! takes what is waiting (up to a cap), at most one REGISTER per AoR (a second one for the
//! same AoR waits for the next batch), and runs it through the backend. Under light load a
//! batch is one REGISTER, so nothing waits for company.
//!
//! Each REGISTER's outcome is what it would have been alone: its decision sees only its own
//! AoR's rows, read under its AoR's lock. When the shared work is rejected (a row the database
//! refuses), the REGISTERs are retried one by one, so only a REGISTER that fails on its own gets
//! an error. When the database is unavailable or busy, every REGISTER of the batch fails at
//! once (SPEC H6): retrying them one by one against a database that is down made a REGISTER
//! wait about two minutes. A REGISTER whose caller stopped waiting (its deadline passed) is
//! dropped before it reaches the database.

use super::{Aor, AorSnapshot, Applied, Plan, Reads, StoreError};
use std::any::Any;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A decision's outcome with its type erased while it travels through the queue.
pub(crate) type Outcome = Box<dyn Any + Send>;
pub(crate) type Decide = Box<dyn Fn(&AorSnapshot) -> Plan<Outcome> + Send + Sync>;

pub(crate) struct Job {
    pub aor: Aor,
    pub reads: Reads,
    pub decide: Decide,
    reply: oneshot::Sender<Result<Applied<Outcome>, StoreError>>,
}

impl Job {
    /// Whether the REGISTER's caller stopped waiting (its deadline passed, it was answered
    /// 500): a backend still decides it, but writes nothing for it, so that work which has been
    /// answered does not compete with fresh REGISTERs (a failover's backlog, for one).
    pub(crate) fn gave_up(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A backend's way to run several AoRs' changes in one transaction. The jobs have distinct
/// AoRs; the result has one entry per job, in order.
pub(crate) trait Batch: Clone + Send + Sync + 'static {
    fn run(
        &self,
        jobs: &[Job],
    ) -> impl Future<Output = Result<Vec<Applied<Outcome>>, StoreError>> + Send;
}

#[derive(Clone, Debug)]
pub(crate) struct Coalescer {
    queue: mpsc::Sender<Job>,
}

impl Coalescer {
    /// Starts `workers` tasks that run batches of at most `max_batch` REGISTERs.
    pub fn start<B: Batch>(backend: B, workers: usize, max_batch: usize) -> Coalescer {
        let (queue, rx) = mpsc::channel(64 * 1024);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let (backend, rx) = (backend.clone(), Arc::clone(&rx));
            tokio::spawn(worker(backend, rx, max_batch.max(1)));
        }
        Coalescer { queue }
    }

    pub async fn submit<T, F>(
        &self,
        aor: &Aor,
        reads: Reads,
        decide: F,
    ) -> Result<Applied<T>, StoreError>
    where
        F: Fn(&AorSnapshot) -> Plan<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let decide: Decide =
            Box::new(move |snapshot| decide(snapshot).map(|o| Box::new(o) as Outcome));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            aor: aor.clone(),
            reads,
            decide,
            reply,
        };
        if self.queue.send(job).await.is_err() {
            return Err(StoreError::Corrupt("the store is shut down".into()));
        }
        let applied = answer
            .await
            .map_err(|_| StoreError::Corrupt("the store worker stopped".into()))??;
        let outcome = applied
            .outcome
            .downcast::<T>()
            .map_err(|_| StoreError::Corrupt("decision outcome of another type".into()))?;
        Ok(Applied {
            outcome: *outcome,
            now: applied.now,
            written: applied.written,
            bindings: applied.bindings,
        })
    }
}

async fn worker<B: Batch>(backend: B, queue: Arc<Mutex<mpsc::Receiver<Job>>>, max_batch: usize) {
    // REGISTERs for an AoR already in the batch being built wait here for the next one.
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        let mut batch: Vec<Job> = Vec::new();
        let mut aors: HashSet<Aor> = HashSet::new();
        let mut later: VecDeque<Job> = VecDeque::new();
        for job in waiting.drain(..) {
            if batch.len() < max_batch && aors.insert(job.aor.clone()) {
                batch.push(job);
            } else {
                later.push_back(job);
            }
        }
        waiting = later;
        if batch.is_empty() {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else { return };
            aors.insert(first.aor.clone());
            batch.push(first);
            while batch.len() < max_batch {
                let Ok(job) = rx.try_recv() else { break };
                if aors.insert(job.aor.clone()) {
                    batch.push(job);
                } else {
                    waiting.push_back(job);
                }
            }
        }
        run(&backend, batch).await;
    }
}

async fn run<B: Batch>(backend: &B, batch: Vec<Job>) {
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|job| !job.reply.is_closed())
        .collect();
    if batch.is_empty() {
        return;
    }
    crate::metrics::METRICS
        .db_batch_size
        .observe(batch.len() as f64);
    match backend.run(&batch).await {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(Ok(result));
            }
        }
        Err(e) if batch.len() == 1 || e.is_transient() => {
            let mut jobs = batch.into_iter();
            if let Some(last) = jobs.next_back() {
                for job in jobs {
                    let _ = job.reply.send(Err(e.duplicate()));
                }
                let _ = last.reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, size = batch.len(), "batch failed; retrying its REGISTERs one by one");
            for job in batch {
                if job.reply.is_closed() {
                    continue;
                }
                let alone = std::slice::from_ref(&job);
                let result = backend.run(alone).await.and_then(|r| {
                    r.into_iter()
                        .next()
                        .ok_or_else(|| StoreError::Corrupt("batch returned no result".into()))
                });
                let _ = job.reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A backend that records batch sizes and fails any batch holding the AoR `bad@x`.
    #[derive(Clone, Default)]
    struct Recorder {
        sizes: Arc<StdMutex<Vec<usize>>>,
    }

    impl Batch for Recorder {
        async fn run(&self, jobs: &[Job]) -> Result<Vec<Applied<Outcome>>, StoreError> {
            self.sizes.lock().unwrap().push(jobs.len());
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if jobs.iter().any(|j| j.aor.username == "bad") {
                return Err(StoreError::Corrupt("refused".into()));
            }
            if jobs.iter().any(|j| j.aor.username == "down") {
                return Err(StoreError::Busy);
            }
            let now = chrono::Utc::now();
            Ok(jobs
                .iter()
                .map(|j| {
                    let plan = (j.decide)(&AorSnapshot::of(now, vec![]));
                    Applied {
                        outcome: plan.outcome,
                        now,
                        written: Default::default(),
                        bindings: vec![],
                    }
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn s2_waiting_registers_share_a_batch_and_a_failure_stays_their_own() {
        let backend = Recorder::default();
        let coalescer = Coalescer::start(backend.clone(), 1, 64);
        let mut tasks = Vec::new();
        for n in 0..20 {
            let c = coalescer.clone();
            let user = if n == 7 {
                "bad".to_string()
            } else {
                format!("u{n}")
            };
            tasks.push(tokio::spawn(async move {
                let aor = Aor::new(user, "x");
                c.submit(&aor, Reads::Bindings, move |_| Plan::unchanged(n))
                    .await
                    .map(|a| a.outcome)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        for (n, r) in results.iter().enumerate() {
            match r {
                Ok(outcome) => assert_eq!(*outcome, n as i32),
                Err(_) => assert_eq!(n, 7, "only the bad REGISTER fails"),
            }
        }
        assert!(results[7].is_err());
        let sizes = backend.sizes.lock().unwrap().clone();
        assert!(
            sizes.iter().any(|s| *s > 1),
            "REGISTERs waiting together were batched: {sizes:?}"
        );
    }

    /// A REGISTER for `user@x` whose decision answers `n`, submitted from a task of its own.
    fn spawn_submit(
        coalescer: &Coalescer,
        user: &str,
        n: i32,
    ) -> tokio::task::JoinHandle<Result<i32, StoreError>> {
        let (c, aor) = (coalescer.clone(), Aor::new(user, "x"));
        tokio::spawn(async move {
            c.submit(&aor, Reads::Bindings, move |_| Plan::unchanged(n))
                .await
                .map(|a| a.outcome)
        })
    }

    #[tokio::test]
    async fn h6_a_transient_failure_fails_the_batch_at_once() {
        let backend = Recorder::default();
        let coalescer = Coalescer::start(backend.clone(), 1, 64);
        // Keep the worker busy so that the next REGISTERs wait together.
        let first = spawn_submit(&coalescer, "first", 0);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let mut tasks = Vec::new();
        for n in 0..10 {
            let user = if n == 3 {
                "down".to_string()
            } else {
                format!("u{n}")
            };
            tasks.push(spawn_submit(&coalescer, &user, n));
        }
        assert!(first.await.unwrap().is_ok());
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Err(StoreError::Busy)));
        }
        let sizes = backend.sizes.lock().unwrap().clone();
        assert_eq!(
            sizes,
            vec![1, 10],
            "no one-by-one retry after a transient failure"
        );
    }

    #[tokio::test]
    async fn h6_a_register_nobody_waits_for_is_not_run() {
        let backend = Recorder::default();
        let coalescer = Coalescer::start(backend.clone(), 1, 64);
        let busy = spawn_submit(&coalescer, "first", 0);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(1),
            coalescer.submit(&Aor::new("late", "x"), Reads::Bindings, |_| {
                Plan::unchanged(1)
            }),
        )
        .await;
        assert!(gave_up.is_err(), "the caller stopped waiting");
        assert!(busy.await.unwrap().is_ok());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(backend.sizes.lock().unwrap().clone(), vec![1]);
    }

    #[tokio::test]
    async fn s2_one_register_per_aor_per_batch() {
        let backend = Recorder::default();
        let coalescer = Coalescer::start(backend.clone(), 1, 64);
        let mut tasks = Vec::new();
        for n in 0..5 {
            let c = coalescer.clone();
            tasks.push(tokio::spawn(async move {
                c.submit(&Aor::new("same", "x"), Reads::Bindings, move |_| {
                    Plan::unchanged(n)
                })
                .await
                .map(|a| a.outcome)
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        let sizes = backend.sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|s| *s == 1), "{sizes:?}");
        assert_eq!(sizes.len(), 5);
    }
}
