//! What every benchmark report records about the machine it ran on, and how
//! it summarises repeated measurements: shared by the benchmark targets
//! (`mod machine;`), so their reports agree on both.

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` gives it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU features the crate's cryptography runs on that this machine has:
/// AES-NI and carry-less multiply (AES-GCM), VAES and VPCLMULQDQ (the `aes`
/// crate runs 512-bit VAES where avx512f is there too, 256-bit otherwise),
/// and the SHA extensions (blind indexes' HMAC-SHA256).
pub fn cpu_features() -> Vec<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    [
        "aes",
        "pclmulqdq",
        "avx2",
        "vaes",
        "vpclmulqdq",
        "avx512f",
        "sha_ni",
    ]
    .into_iter()
    .filter(|f| flags.contains(f))
    .collect()
}

/// The median (of an even count, the mean of the middle two).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) / 2.0
    } else {
        s[mid]
    }
}
