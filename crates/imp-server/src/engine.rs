//! Runs generations: at most `--parallel` at once on blocking threads, the rest waiting in a
//! bounded queue, each streaming its text through a channel, and each in a conversation cache
//! (`Session`) taken from a bounded pool so that a follow-up turn reuses its prefix.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imp::{GenerationOptions, ImpModel, Position, PreparedPrompt, Session};
use tokio::sync::{mpsc, Semaphore, TryAcquireError};

use crate::error::ApiError;
use crate::images::{ImageBytes, ImageCache};
use crate::metrics::{Gauges, Metrics};

/// What a generation reports while it runs.
pub enum Event {
    Text(String),
    /// Boxed: an answer is far larger than a piece of text.
    Done(Result<Box<Answer>, ApiError>),
}

pub struct Answer {
    pub generation: imp::Generation,
    /// From the request's arrival to its first token's logits: reading it, fetching and
    /// encoding its images, waiting for a slot, prefill.
    pub time_to_first_token: Duration,
}

pub struct Job {
    /// When the request arrived.
    pub received: Instant,
    pub prepared: PreparedPrompt,
    pub images: Vec<ImageBytes>,
    pub options: GenerationOptions,
    /// Also in `options`: set when the client goes away.
    pub cancel: Arc<AtomicBool>,
}

pub struct Engine {
    pub model: Arc<ImpModel>,
    pub metrics: Metrics,
    images: ImageCache,
    slots: Arc<Semaphore>,
    parallel: usize,
    queue_capacity: usize,
    queued: AtomicUsize,
    sessions: Mutex<SessionPool>,
}

impl Engine {
    pub fn new(
        model: Arc<ImpModel>,
        images: ImageCache,
        parallel: usize,
        queue_capacity: usize,
        sessions: usize,
    ) -> Self {
        Self {
            model,
            metrics: Metrics::new(),
            images,
            slots: Arc::new(Semaphore::new(parallel)),
            parallel,
            queue_capacity,
            queued: AtomicUsize::new(0),
            sessions: Mutex::new(SessionPool {
                idle: Vec::new(),
                capacity: sessions,
                clock: 0,
            }),
        }
    }

    pub fn gauges(&self) -> Gauges {
        let (disk_cache, disk_cache_bytes) = self.images.disk();
        Gauges {
            disk_cache,
            disk_cache_bytes,
            queued: self.queued.load(Ordering::Relaxed),
            running: self.parallel - self.slots.available_permits(),
            idle_sessions: self.pool().idle.len(),
            cached_images: self.images.len(),
        }
    }

    /// Takes no more generations: queued and new requests are answered 503, those running
    /// finish.
    pub fn close(&self) {
        self.slots.close();
    }

    /// Waits for a generation slot (429 when the queue is full) and starts the job on a
    /// blocking thread. Dropping the returned future while queued gives up the place.
    pub async fn submit(
        self: &Arc<Self>,
        job: Job,
    ) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(ApiError::shutting_down()),
            Err(TryAcquireError::NoPermits) => {
                if self.queued.fetch_add(1, Ordering::SeqCst) >= self.queue_capacity {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(ApiError::queue_full());
                }
                let _queued = Decrement(&self.queued);
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ApiError::shutting_down())?
            }
        };
        // Unbounded, so that a slow reader never holds up the generation (and its slot): at
        // most one piece per generated token waits here.
        let (sender, receiver) = mpsc::unbounded_channel();
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.run(job, &sender);
        });
        Ok(receiver)
    }

    fn run(&self, job: Job, sender: &mpsc::UnboundedSender<Event>) {
        let mut on_text = |text: &str| {
            if sender.send(Event::Text(text.to_owned())).is_err() {
                job.cancel.store(true, Ordering::Relaxed);
            }
        };
        let result = if job.cancel.load(Ordering::Relaxed) {
            Err(imp::Error::Cancelled.into())
        } else {
            self.generate(&job, &mut on_text)
        };
        if result.is_err() && job.cancel.load(Ordering::Relaxed) {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        // The receiver is gone only when the client is.
        let _ = sender.send(Event::Done(result.map(Box::new)));
    }

    fn generate(&self, job: &Job, on_text: &mut dyn FnMut(&str)) -> Result<Answer, ApiError> {
        let rows = job
            .images
            .iter()
            .map(|image| self.images.rows(&self.model, image, &self.metrics))
            .collect::<Result<Vec<_>, _>>()?;
        let (mut session, continued) = self.pool().take(&self.model, job.prepared.positions());
        let before_prefill = job.received.elapsed();
        let result = imp::generate_prepared(
            &self.model,
            &mut session,
            &job.prepared,
            &rows,
            &job.options,
            on_text,
        );
        self.pool().put(session, job.prepared.len());
        let generation = result?;
        let m = &self.metrics;
        let counter = if continued {
            &m.kv_cache_hits
        } else {
            &m.kv_cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        m.kv_cache_reused_tokens
            .fetch_add(generation.reused_tokens as u64, Ordering::Relaxed);
        m.prompt_tokens
            .fetch_add(generation.prompt_tokens as u64, Ordering::Relaxed);
        m.completion_tokens
            .fetch_add(generation.tokens.len() as u64, Ordering::Relaxed);
        if generation.timings.decode_steps > 0 {
            m.tokens_per_second(generation.timings.decode_tokens_per_second());
        }
        Ok(Answer {
            time_to_first_token: before_prefill + generation.timings.prefill,
            generation,
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, SessionPool> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Idle conversation caches, least recently used evicted first.
struct SessionPool {
    idle: Vec<Idle>,
    capacity: usize,
    clock: u64,
}

struct Idle {
    last_used: u64,
    /// Length of the prompt it last answered: a next turn of that conversation extends it.
    prompt_len: usize,
    session: Session,
}

impl SessionPool {
    /// The idle session whose last prompt `positions` extends (the previous turns of this
    /// conversation; its answer may be re-tokenized differently, which only shortens the reuse),
    /// else a fresh one, recycling the least recently used when the pool is full. The flag tells
    /// whether a conversation continued.
    fn take(&mut self, model: &ImpModel, positions: &[Position]) -> (Session, bool) {
        let continued = self
            .idle
            .iter()
            .enumerate()
            .filter(|(_, idle)| idle.session.common_prefix(positions) >= idle.prompt_len)
            .max_by_key(|(_, idle)| idle.prompt_len)
            .map(|(i, _)| i);
        if let Some(i) = continued {
            return (self.idle.swap_remove(i).session, true);
        }
        if self.idle.len() < self.capacity {
            return (model.new_session(), false);
        }
        match self.least_recently_used() {
            Some(i) => (self.idle.swap_remove(i).session, false),
            None => (model.new_session(), false),
        }
    }

    fn put(&mut self, session: Session, prompt_len: usize) {
        self.clock += 1;
        self.idle.push(Idle {
            last_used: self.clock,
            prompt_len,
            session,
        });
        while self.idle.len() > self.capacity {
            if let Some(i) = self.least_recently_used() {
                self.idle.swap_remove(i);
            }
        }
    }

    fn least_recently_used(&self) -> Option<usize> {
        (0..self.idle.len()).min_by_key(|&i| self.idle[i].last_used)
    }
}
