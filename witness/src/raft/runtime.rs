//! openraft's async runtime for the witness: tokio, with a random number
//! generator that can be seeded.
//!
//! openraft draws its election timeouts (and the first wait of its tick)
//! from `AsyncRuntime::thread_rng()`. Tokio's runtime answers with the
//! operating system's entropy, which makes a deterministic simulation
//! impossible to replay. [`WitnessRuntime`] is tokio's runtime in every
//! respect but that one: each call to `thread_rng()` returns a fresh
//! generator whose seed is the next value of a per-thread SplitMix64
//! sequence.
//!
//! - In production nobody seeds it: each thread's sequence starts from OS
//!   entropy the first time it is used, so timeouts stay as random as
//!   before (the spread is what prevents split votes, not the quality of
//!   the generator).
//! - The simulation calls [`seed_rng`] on its thread before building a
//!   cluster; every host of a turmoil simulation runs on that one thread,
//!   so the whole sequence of timeouts follows from the seed.
//!
//! Not here: tokio's own randomness (`select!` branch order), which only a
//! `--cfg tokio_unstable` build lets turmoil seed.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::async_runtime::AsyncRuntime;
use openraft_rt_tokio::TokioRuntime;
use rand_openraft::SeedableRng;
use rand_openraft::rngs::StdRng;

thread_local! {
    /// This thread's position in its SplitMix64 sequence; `None` until it is
    /// seeded or first used.
    static RNG_STATE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Restart this thread's sequence of generators from `seed`: every
/// `thread_rng()` call on this thread from now on is a function of `seed`
/// and of how many calls came before it.
pub fn seed_rng(seed: u64) {
    RNG_STATE.with(|s| s.set(Some(seed)));
}

/// The next seed of this thread's sequence (SplitMix64: a bijective mix of
/// a Weyl sequence, so consecutive seeds are unrelated).
fn next_seed() -> u64 {
    RNG_STATE.with(|s| {
        let state = s.get().unwrap_or_else(rand::random::<u64>);
        let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(Some(state));
        let z = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Tokio, with a seedable `thread_rng()` (see the module doc).
#[derive(Debug)]
pub struct WitnessRuntime(TokioRuntime);

impl AsyncRuntime for WitnessRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = StdRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        StdRng::seed_from_u64(next_seed())
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        WitnessRuntime(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use rand_openraft::RngExt;

    use super::*;

    /// The same seed gives the same timeouts; OS entropy is used otherwise.
    #[test]
    fn seeded_sequences_repeat() {
        let draw = || -> Vec<u64> {
            (0..8)
                .map(|_| WitnessRuntime::thread_rng().random_range(750..1500))
                .collect()
        };
        seed_rng(42);
        let a = draw();
        seed_rng(42);
        let b = draw();
        seed_rng(43);
        let c = draw();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().all(|t| (750..1500).contains(t)));
    }
}
