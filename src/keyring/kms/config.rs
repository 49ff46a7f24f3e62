//! Timeouts and retries of KMS calls.

use std::time::Duration;

use crate::error::{Error, Result};

/// Timeouts and retry policy of a [`super::KmsKeyring`].
///
/// The AWS SDK's defaults wait forever on an endpoint that accepts connections
/// and never answers; these defaults bound every KMS operation to
/// [`operation_timeout`](Self::operation_timeout) including retries.
///
/// The keyring runs its own retry loop (exponential backoff with full jitter,
/// on throttling, timeouts, connection failures and KMS internal errors) so that
/// it can count throttles and retries; the SDK client's own retries are turned
/// off, so attempts never multiply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsConfig {
    /// Longest time one HTTP attempt may take. Default 2 s.
    pub attempt_timeout: Duration,
    /// Longest time one operation may take, all attempts and backoff included.
    /// Default 5 s.
    pub operation_timeout: Duration,
    /// Longest time to establish a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// Attempts per operation (1 = no retry). Default 3.
    pub max_attempts: u32,
    /// Backoff before the first retry (full jitter: a uniform random delay up
    /// to this). Doubles per retry. Default 50 ms.
    pub initial_backoff: Duration,
    /// Cap of the backoff. Default 1 s.
    pub max_backoff: Duration,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            attempt_timeout: Duration::from_secs(2),
            operation_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl KmsConfig {
    /// Set [`KmsConfig::attempt_timeout`].
    pub fn attempt_timeout(mut self, v: Duration) -> Self {
        self.attempt_timeout = v;
        self
    }
    /// Set [`KmsConfig::operation_timeout`].
    pub fn operation_timeout(mut self, v: Duration) -> Self {
        self.operation_timeout = v;
        self
    }
    /// Set [`KmsConfig::connect_timeout`].
    pub fn connect_timeout(mut self, v: Duration) -> Self {
        self.connect_timeout = v;
        self
    }
    /// Set [`KmsConfig::max_attempts`].
    pub fn max_attempts(mut self, v: u32) -> Self {
        self.max_attempts = v;
        self
    }
    /// Set [`KmsConfig::initial_backoff`].
    pub fn initial_backoff(mut self, v: Duration) -> Self {
        self.initial_backoff = v;
        self
    }
    /// Set [`KmsConfig::max_backoff`].
    pub fn max_backoff(mut self, v: Duration) -> Self {
        self.max_backoff = v;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.attempt_timeout.is_zero()
            || self.operation_timeout.is_zero()
            || self.connect_timeout.is_zero()
        {
            return Err(Error::Config(
                "KMS timeouts must be greater than zero".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("KMS max_attempts must be at least 1".into()));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(Error::Config(
                "KMS initial_backoff must not exceed max_backoff".into(),
            ));
        }
        Ok(())
    }

    /// The jittered delay before retry number `retry` (1-based).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let cap = exp.min(self.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_bounded_and_valid() {
        let c = KmsConfig::default();
        c.validate().unwrap();
        assert_eq!(c.attempt_timeout, Duration::from_secs(2));
        assert_eq!(c.operation_timeout, Duration::from_secs(5));
        assert_eq!(c.max_attempts, 3);
    }

    #[test]
    fn invalid_configs_are_refused() {
        assert!(KmsConfig::default().max_attempts(0).validate().is_err());
        assert!(
            KmsConfig::default()
                .attempt_timeout(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(
            KmsConfig::default()
                .initial_backoff(Duration::from_secs(2))
                .max_backoff(Duration::from_secs(1))
                .validate()
                .is_err()
        );
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let c = KmsConfig::default()
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(300));
        let samples: Vec<Duration> = (0..200).map(|_| c.backoff(5)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(300)));
        // Full jitter: not all samples equal.
        assert!(samples.iter().any(|d| *d != samples[0]));
        assert!((0..200).all(|_| c.backoff(1) <= Duration::from_millis(100)));
        assert!((0..50).all(|_| c.backoff(40) <= Duration::from_millis(300)));
    }
}
