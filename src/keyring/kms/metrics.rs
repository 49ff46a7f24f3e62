//! Counters of KMS calls.

use std::sync::atomic::{AtomicU64, Ordering};

/// The KMS operations the keyring uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KmsOperation {
    /// GenerateDataKey: a new data key.
    GenerateDataKey,
    /// Decrypt: unwrap a stored data key.
    Decrypt,
    /// Encrypt: wrap a data key under an additional key.
    Encrypt,
    /// ReEncrypt: move a wrapped key to another master key inside KMS.
    ReEncrypt,
    /// DescribeKey: resolve an alias or key id to the key ARN.
    DescribeKey,
}

impl KmsOperation {
    /// The KMS API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            KmsOperation::GenerateDataKey => "GenerateDataKey",
            KmsOperation::Decrypt => "Decrypt",
            KmsOperation::Encrypt => "Encrypt",
            KmsOperation::ReEncrypt => "ReEncrypt",
            KmsOperation::DescribeKey => "DescribeKey",
        }
    }
}

impl std::fmt::Display for KmsOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a keyring's KMS counters, read with
/// [`super::KmsKeyring::metrics`]. Call counts count HTTP requests sent to KMS
/// (every attempt, retries included), which is what KMS quotas count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KmsMetrics {
    /// GenerateDataKey requests.
    pub generate_data_key_calls: u64,
    /// Decrypt requests.
    pub decrypt_calls: u64,
    /// Encrypt requests.
    pub encrypt_calls: u64,
    /// ReEncrypt requests.
    pub re_encrypt_calls: u64,
    /// DescribeKey requests.
    pub describe_key_calls: u64,
    /// Operations that failed after their last attempt.
    pub failures: u64,
    /// Attempts answered with ThrottlingException.
    pub throttles: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Attempts retried (after a throttle, timeout or transient error).
    pub retries: u64,
    /// Unwraps that succeeded only with a wrapped blob after the first tried.
    pub failovers: u64,
    /// Requests in flight right now.
    pub in_flight: u64,
    /// The most requests ever in flight at once.
    pub max_in_flight: u64,
    /// Sum of the latencies of all attempts, in microseconds.
    pub total_latency_us: u64,
}

impl KmsMetrics {
    /// All KMS requests, every operation.
    pub fn total_calls(&self) -> u64 {
        self.generate_data_key_calls
            + self.decrypt_calls
            + self.encrypt_calls
            + self.re_encrypt_calls
            + self.describe_key_calls
    }

    /// Requests of one operation.
    pub fn calls(&self, op: KmsOperation) -> u64 {
        match op {
            KmsOperation::GenerateDataKey => self.generate_data_key_calls,
            KmsOperation::Decrypt => self.decrypt_calls,
            KmsOperation::Encrypt => self.encrypt_calls,
            KmsOperation::ReEncrypt => self.re_encrypt_calls,
            KmsOperation::DescribeKey => self.describe_key_calls,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    generate_data_key: AtomicU64,
    decrypt: AtomicU64,
    encrypt: AtomicU64,
    re_encrypt: AtomicU64,
    describe_key: AtomicU64,
    pub failures: AtomicU64,
    pub throttles: AtomicU64,
    pub timeouts: AtomicU64,
    pub retries: AtomicU64,
    pub failovers: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    total_latency_us: AtomicU64,
}

/// Decrements the in-flight count when the attempt ends (or is cancelled).
pub(crate) struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request of `op` and mark it in flight.
    pub fn start(&self, op: KmsOperation) -> InFlight<'_> {
        Self::bump(match op {
            KmsOperation::GenerateDataKey => &self.generate_data_key,
            KmsOperation::Decrypt => &self.decrypt,
            KmsOperation::Encrypt => &self.encrypt,
            KmsOperation::ReEncrypt => &self.re_encrypt,
            KmsOperation::DescribeKey => &self.describe_key,
        });
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    pub fn latency(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.total_latency_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> KmsMetrics {
        let g = |c: &AtomicU64| c.load(Ordering::SeqCst);
        KmsMetrics {
            generate_data_key_calls: g(&self.generate_data_key),
            decrypt_calls: g(&self.decrypt),
            encrypt_calls: g(&self.encrypt),
            re_encrypt_calls: g(&self.re_encrypt),
            describe_key_calls: g(&self.describe_key),
            failures: g(&self.failures),
            throttles: g(&self.throttles),
            timeouts: g(&self.timeouts),
            retries: g(&self.retries),
            failovers: g(&self.failovers),
            in_flight: g(&self.in_flight),
            max_in_flight: g(&self.max_in_flight),
            total_latency_us: g(&self.total_latency_us),
        }
    }
}
