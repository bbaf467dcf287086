//! Who may use the cache: job-scoped cache tokens (hex HMAC-SHA256 over `jobId:executionId`,
//! checked in constant time against the registry of active executions), the per-token rate
//! limit (token bucket), and the signed short-lived download URLs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::auth::{cache_token, cache_token_matches};
use crate::api::Registry;
use crate::secrets::Secrets;
use crate::store::ActiveExecution;

/// Maps the SHA-256 of each active execution's cache token to that execution, so a presented
/// token finds its execution without scanning. The digest only picks a candidate; the token
/// is then compared in constant time with the HMAC recomputed for that job and execution,
/// and the execution must still be active in the registry.
#[derive(Default)]
pub struct TokenIndex {
    inner: Mutex<IndexInner>,
}

#[derive(Default)]
struct IndexInner {
    by_digest: HashMap<[u8; 32], (String, String)>,
    by_exec: HashMap<String, [u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenIndex {
    fn find(&self, d: &[u8; 32]) -> Option<(String, String)> {
        self.inner.lock().ok()?.by_digest.get(d).cloned()
    }

    /// Adds executions of the registry that are new and drops those that left it. HMACs are
    /// computed only for new executions, so an unknown token costs one registry scan.
    fn refresh(&self, secrets: &Secrets, active: &[ActiveExecution]) {
        let Ok(mut m) = self.inner.lock() else { return };
        let live: std::collections::HashSet<&str> =
            active.iter().map(|e| e.execution_id.as_str()).collect();
        let stale: Vec<String> = m
            .by_exec
            .keys()
            .filter(|k| !live.contains(k.as_str()))
            .cloned()
            .collect();
        for k in stale {
            if let Some(d) = m.by_exec.remove(&k) {
                m.by_digest.remove(&d);
            }
        }
        for e in active {
            if m.by_exec.contains_key(&e.execution_id) {
                continue;
            }
            let d = digest(&cache_token(secrets, &e.job_id, &e.execution_id));
            m.by_exec.insert(e.execution_id.clone(), d);
            m.by_digest
                .insert(d, (e.job_id.clone(), e.execution_id.clone()));
        }
    }

    /// The active execution `token` belongs to, if any.
    pub fn resolve(
        &self,
        secrets: &Secrets,
        registry: &Registry,
        token: &str,
        now: i64,
    ) -> Option<ActiveExecution> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let d = digest(token);
        let cand = match self.find(&d) {
            Some(c) => Some(c),
            None => {
                self.refresh(secrets, &registry.active(now));
                self.find(&d)
            }
        };
        let (job, exec) = cand?;
        if !cache_token_matches(secrets, &job, &exec, token) {
            return None;
        }
        registry.get_for_job(&job, &exec, now)
    }
}

/// Token buckets keyed by caller: `burst` requests at once, refilled at `rate` per second.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `who`; `Err(seconds)` to wait when the bucket is empty.
    pub fn check(&self, who: &str) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut m) = self.buckets.lock() else {
            return Err(1);
        };
        if m.len() >= MAX_BUCKETS && !m.contains_key(who) {
            let (rate, burst) = (self.rate, self.burst);
            // Full buckets carry no state worth keeping.
            m.retain(|_, (t, at)| *t + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = m.entry(who.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate).ceil().max(1.0) as u64)
        }
    }

    /// Forgets `who` (its execution ended).
    pub fn forget(&self, who: &str) {
        if let Ok(mut m) = self.buckets.lock() {
            m.remove(who);
        }
    }
}

/// Signs download URLs with a key derived from the cache secret (domain-separated from the
/// cache tokens).
pub struct UrlSigner {
    key: [u8; 32],
}

impl UrlSigner {
    pub fn new(secrets: &Secrets) -> UrlSigner {
        let mut mac = Hmac::<Sha256>::new_from_slice(secrets.cache_secret.value.as_bytes())
            .expect("HMAC accepts any key length");
        mac.update(b"jobcell cache download url v1");
        UrlSigner {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, id: i64, exp: i64) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{id}:{exp}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Hex signature of entry `id` valid until `exp` (unix seconds).
    pub fn sign(&self, id: i64, exp: i64) -> String {
        hex::encode(self.mac(id, exp))
    }

    /// Constant-time check of a presented signature; expiry is checked by the caller.
    pub fn verify(&self, id: i64, exp: i64, sig: &str) -> bool {
        let Ok(given) = hex::decode(sig) else {
            return false;
        };
        bool::from(given.as_slice().ct_eq(&self.mac(id, exp)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refuses_then_refills() {
        let l = RateLimiter::new(1000.0, 3.0);
        for _ in 0..3 {
            l.check("a").unwrap();
        }
        assert!(l.check("a").is_err());
        l.check("b").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        l.check("a").unwrap();
        let slow = RateLimiter::new(0.1, 1.0);
        slow.check("x").unwrap();
        assert_eq!(slow.check("x"), Err(10));
    }
}
