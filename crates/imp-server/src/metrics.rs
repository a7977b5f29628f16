//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Seconds to the first streamed text.
const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Decode speed of one request, tokens per second.
const SPEED_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

#[derive(Default)]
pub struct Metrics {
    /// Chat completion responses by HTTP status.
    responses: Mutex<BTreeMap<u16, u64>>,
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub image_cache_memory_hits: AtomicU64,
    pub image_cache_disk_hits: AtomicU64,
    pub image_cache_misses: AtomicU64,
    pub kv_cache_hits: AtomicU64,
    pub kv_cache_misses: AtomicU64,
    pub kv_cache_reused_tokens: AtomicU64,
    time_to_first_token: Mutex<Histogram>,
    tokens_per_second: Mutex<Histogram>,
}

/// Gauges read when `/metrics` is rendered.
pub struct Gauges {
    pub queued: usize,
    pub running: usize,
    pub idle_sessions: usize,
    pub cached_images: usize,
    /// Whether the disk tier of the image cache is in use (off when never configured or after
    /// a write failed), and the bytes it holds.
    pub disk_cache: bool,
    pub disk_cache_bytes: u64,
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            time_to_first_token: Mutex::new(Histogram::new(TTFT_BUCKETS)),
            tokens_per_second: Mutex::new(Histogram::new(SPEED_BUCKETS)),
            ..Default::default()
        }
    }

    pub fn response(&self, status: u16) {
        *lock(&self.responses).entry(status).or_default() += 1;
    }

    pub fn time_to_first_token(&self, seconds: f64) {
        lock(&self.time_to_first_token).observe(seconds);
    }

    pub fn tokens_per_second(&self, speed: f64) {
        lock(&self.tokens_per_second).observe(speed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            header(out, name, help, "counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };
        header(
            &mut out,
            "imp_requests_total",
            "Chat completion requests answered, by HTTP status.",
            "counter",
        );
        for (status, count) in lock(&self.responses).iter() {
            let _ = writeln!(out, "imp_requests_total{{status=\"{status}\"}} {count}");
        }
        counter(
            &mut out,
            "imp_requests_cancelled_total",
            "Generations stopped because the client went away.",
            &self.cancelled,
        );
        counter(
            &mut out,
            "imp_prompt_tokens_total",
            "Prompt positions (text tokens and image rows).",
            &self.prompt_tokens,
        );
        counter(
            &mut out,
            "imp_completion_tokens_total",
            "Generated tokens.",
            &self.completion_tokens,
        );
        for (name, help, value) in [
            (
                "imp_queue_length",
                "Requests waiting for a generation slot.",
                gauges.queued as u64,
            ),
            (
                "imp_running",
                "Generations in progress.",
                gauges.running as u64,
            ),
            (
                "imp_kv_cache_sessions",
                "Idle conversation caches kept for reuse.",
                gauges.idle_sessions as u64,
            ),
            (
                "imp_image_cache_entries",
                "Projected images held in memory.",
                gauges.cached_images as u64,
            ),
            (
                "imp_image_cache_disk_enabled",
                "1 while the disk image cache (--cache-dir) is in use, 0 when off or switched off \
                 after a write failed.",
                u64::from(gauges.disk_cache),
            ),
            (
                "imp_image_cache_disk_bytes",
                "Bytes of projected images held on disk.",
                gauges.disk_cache_bytes,
            ),
        ] {
            header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "imp_image_cache_hits_total",
            "Images whose projected rows came from the cache, by tier.",
            "counter",
        );
        for (tier, value) in [
            ("memory", &self.image_cache_memory_hits),
            ("disk", &self.image_cache_disk_hits),
        ] {
            let _ = writeln!(
                out,
                "imp_image_cache_hits_total{{tier=\"{tier}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "imp_image_cache_misses_total",
            "Images run through the vision tower and projector.",
            &self.image_cache_misses,
        );
        counter(
            &mut out,
            "imp_kv_cache_hits_total",
            "Requests that continued a cached conversation (or the same image).",
            &self.kv_cache_hits,
        );
        counter(
            &mut out,
            "imp_kv_cache_misses_total",
            "Requests that started a new conversation cache.",
            &self.kv_cache_misses,
        );
        counter(
            &mut out,
            "imp_kv_cache_reused_tokens_total",
            "Prompt positions taken from a cached prefix instead of being prefilled.",
            &self.kv_cache_reused_tokens,
        );
        lock(&self.time_to_first_token).render(
            &mut out,
            "imp_time_to_first_token_seconds",
            "Time from the request to its first generated text.",
        );
        lock(&self.tokens_per_second).render(
            &mut out,
            "imp_decode_tokens_per_second",
            "Decode speed of each finished generation.",
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Metrics stay usable after a panic elsewhere poisoned a lock: the counts are still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bound, observations <= it (not cumulative; summed when rendered).
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}
