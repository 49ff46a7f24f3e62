//! What every benchmark report records about the machine it ran on, and how
//! it summarises repeated measurements: shared by the benchmark targets
//! (`mod machine;`), so their reports agree on both.

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` gives it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The CPU features relevant to the crate's cryptography that this machine
/// reports: AES-NI and carry-less multiply (AES-GCM), VAES, VPCLMULQDQ and
/// AVX-512 (wider backends), and the SHA extensions (blind indexes'
/// HMAC-SHA256). Which of them the `aes` crate uses: [`aes_backend`].
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

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
cpufeatures::new!(aes_vaes512, "avx512f", "vaes");
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
cpufeatures::new!(aes_vaes256, "vaes");
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
cpufeatures::new!(aes_ni, "aes");

/// The backend the `aes` crate (0.9) runs on this machine, found by the same
/// runtime detection it makes, in its order (`cpufeatures` 0.3): `vaes512`,
/// `vaes256`, `aes-ni` or `soft`. That detection asks for the AVX-512
/// register state for VAES too, so a CPU with VAES and no AVX-512 (AMD Zen 3)
/// runs AES-NI. Other architectures: `not x86` (the report's CPU features
/// say the rest).
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub fn aes_backend() -> &'static str {
    if aes_vaes512::get() {
        "vaes512"
    } else if aes_vaes256::get() {
        "vaes256"
    } else if aes_ni::get() {
        "aes-ni"
    } else {
        "soft"
    }
}

/// See the x86 version: this reports none on other architectures.
#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
pub fn aes_backend() -> &'static str {
    "not x86"
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
