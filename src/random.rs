//! Random numbers for unique spool names, JWT nonces, retry jitter and the
//! `check --send-test` probe key: getrandom(2), nothing else.
//!
//! Must not: be used where secrecy matters more than "differs every time";
//! the fallback below is not cryptographic.
//! Fails: never; if getrandom fails (only before the kernel's pool is ready
//! at boot), time and address bits stand in, and every caller tolerates a
//! repeat (O_EXCL and link retries, a nonce GitLab does not check).

use std::time::{SystemTime, UNIX_EPOCH};

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // SAFETY: valid, writable buffer of N bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), N, 0) };
    if usize::try_from(n).ok() != Some(N) {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()) as u64
            ^ (&bytes as *const _ as u64);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left((i as u32 * 8) % 64) & 0xff) as u8;
        }
    }
    bytes
}

/// A random 64-bit number.
pub fn u64() -> u64 {
    u64::from_ne_bytes(bytes::<8>())
}
