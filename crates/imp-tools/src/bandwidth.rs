//! A memory read-bandwidth probe: the hardware limit that decoding, which reads every weight
//! once per token, is measured against.

use std::hint::black_box;
use std::time::Instant;

/// Best read bandwidth in bytes per second of `threads` threads summing disjoint parts of a
/// `bytes`-long buffer, over `rounds` passes. The buffer should be several times the last-level
/// cache so that it streams from memory.
pub fn read_bandwidth(threads: usize, bytes: usize, rounds: usize) -> f64 {
    let threads = threads.max(1);
    let words = (bytes / 8).max(threads * 64);
    // Written once so that every page is really backed before it is timed.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let part = words.div_ceil(threads);
    let mut best = 0f64;
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        let sums: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = buffer
                .chunks(part)
                .map(|chunk| scope.spawn(move || sum_words(chunk)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("summing cannot panic"))
                .fold(0, u64::wrapping_add)
        });
        black_box(sums);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// Eight independent lanes so the loop is bound by loads, not by one addition chain; the
/// compiler turns it into vector adds.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = words.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &w) in lanes.iter_mut().zip(block) {
            *lane = lane.wrapping_add(w);
        }
    }
    let rest = blocks
        .remainder()
        .iter()
        .fold(0, |a: u64, &w| a.wrapping_add(w));
    lanes.iter().fold(rest, |a, &l| a.wrapping_add(l))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word() {
        let words: Vec<u64> = (1..=1003).collect();
        assert_eq!(sum_words(&words), 1003 * 1004 / 2);
    }

    #[test]
    fn reports_a_positive_rate() {
        assert!(read_bandwidth(2, 1 << 20, 2) > 0.0);
    }
}
