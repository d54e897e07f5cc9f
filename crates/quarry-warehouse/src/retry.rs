//! Retry as a type: each backend says which of its errors are worth
//! another attempt ([`RetryLogic`]); one policy ([`RetryPolicy`]) does the
//! capped exponential backoff with jitter and the attempt limit for all.

use std::fmt::Display;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// Which errors of a backend are transient.
pub(crate) trait RetryLogic {
    type Error: Display;

    fn is_retriable(&self, error: &Self::Error) -> bool;
}

/// Capped exponential backoff with jitter, at most `max_attempts` attempts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub max_attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The policy of every backend: 0.2 s doubling to 10 s, `max_attempts`
    /// (from the backend's configuration) in all.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// Runs `op` until it succeeds, fails with an error `logic` does not
    /// retry, or the attempts run out; `what` names it in the warnings.
    pub async fn run<T, L, F, Fut>(
        &self,
        logic: &L,
        backend: &str,
        what: &str,
        op: F,
    ) -> Result<T, L::Error>
    where
        L: RetryLogic,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, L::Error>>,
    {
        op.retry(self.backoff())
            .when(|e| logic.is_retriable(e))
            .notify(|e, wait| tracing::warn!(error = %e, ?wait, "{backend}: {what}: retrying"))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct EvenRetries;

    impl RetryLogic for EvenRetries {
        type Error = u32;

        fn is_retriable(&self, e: &u32) -> bool {
            e.is_multiple_of(2)
        }
    }

    #[tokio::test]
    async fn retries_what_the_logic_allows_up_to_the_limit() {
        let policy = RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        // Retriable errors: exactly max_attempts calls.
        let r: Result<(), u32> = policy
            .run(&EvenRetries, "t", "op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(2)
            })
            .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err(2), 4));
        // A permanent error: one call.
        calls.store(0, Ordering::SeqCst);
        let r: Result<(), u32> = policy
            .run(&EvenRetries, "t", "op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(3)
            })
            .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err(3), 1));
        // Success after a retry.
        calls.store(0, Ordering::SeqCst);
        let r = policy
            .run(&EvenRetries, "t", "op", || async {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n == 0 { Err(2) } else { Ok(n) }
            })
            .await;
        assert_eq!(r, Ok(1));
    }
}
