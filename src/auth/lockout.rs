//! Per-address lockout after repeated AUTH failures.
//!
//! The failure delay (`[auth] failure_delay`) slows one session; a guesser
//! simply opens many. This table counts failures per client address
//! across sessions and connectors: after `threshold` failures within
//! `window`, AUTH from that address is refused with 454 4.7.0 for
//! `duration`, *before* any password is checked, so a locked-out guesser
//! costs neither an argon2 verification nor a useful answer. A success
//! clears the address's count.
//!
//! IPv6 clients are counted per /64: one host usually owns a whole /64
//! and could otherwise rotate addresses for free.
//!
//! Memory is bounded: at most `MAX_TRACKED` addresses; when full, expired
//! entries are pruned, then the stalest entry is evicted, so a flood of
//! source addresses cannot grow the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most.
const MAX_TRACKED: usize = 65_536;

/// Lockout settings (`[auth] lockout_threshold`, `lockout_window`,
/// `lockout_duration`).
#[derive(Clone, Copy, Debug)]
pub struct LockoutPolicy {
    /// Failures within `window` that lock an address out; 0 turns the
    /// lockout off.
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    first_failure: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    fn expired(&self, now: Instant, policy: &LockoutPolicy) -> bool {
        match self.locked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.first_failure) >= policy.window,
        }
    }
}

/// What a failure did.
#[derive(Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; `remaining` more failures lock the address out.
    Counted { remaining: u32 },
    /// This failure locked the address out for the policy's duration.
    LockedOut,
}

/// The shared failure table (one per server, shared by all connectors).
#[derive(Debug)]
pub struct AuthLockout {
    policy: LockoutPolicy,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

/// The address failures are counted under: IPv4 as is, IPv6 by /64
/// (IPv4-mapped IPv6 as the IPv4 address).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl AuthLockout {
    pub fn new(policy: LockoutPolicy) -> AuthLockout {
        AuthLockout {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> LockoutPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer `ip` is locked out, if it is.
    pub fn locked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.policy.threshold == 0 {
            return None;
        }
        let entries = self.lock();
        let until = entries.get(&key(ip))?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed AUTH from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> FailureOutcome {
        let p = self.policy;
        if p.threshold == 0 {
            return FailureOutcome::Counted {
                remaining: u32::MAX,
            };
        }
        let mut entries = self.lock();
        let k = key(ip);
        if !entries.contains_key(&k) && entries.len() >= MAX_TRACKED {
            entries.retain(|_, e| !e.expired(now, &p));
            if entries.len() >= MAX_TRACKED {
                // Evict the entry whose first failure is oldest.
                if let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.first_failure)
                    .map(|(k, _)| *k)
                {
                    entries.remove(&oldest);
                }
            }
        }
        let e = entries.entry(k).or_insert(Entry {
            failures: 0,
            first_failure: now,
            locked_until: None,
        });
        if e.expired(now, &p) {
            *e = Entry {
                failures: 0,
                first_failure: now,
                locked_until: None,
            };
        }
        e.failures = e.failures.saturating_add(1);
        if e.failures >= p.threshold {
            e.locked_until = Some(now + p.duration);
            FailureOutcome::LockedOut
        } else {
            FailureOutcome::Counted {
                remaining: p.threshold - e.failures,
            }
        }
    }

    /// A successful AUTH from `ip` clears its count.
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&key(ip));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32) -> LockoutPolicy {
        LockoutPolicy {
            threshold,
            window: Duration::from_secs(600),
            duration: Duration::from_secs(900),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn threshold_failures_lock_out_for_the_duration_then_release() {
        let l = AuthLockout::new(policy(3));
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        assert_eq!(l.failed(a, t0), FailureOutcome::Counted { remaining: 2 });
        assert_eq!(l.failed(a, t0), FailureOutcome::Counted { remaining: 1 });
        assert_eq!(l.locked_for(a, t0), None);
        assert_eq!(l.failed(a, t0), FailureOutcome::LockedOut);
        assert_eq!(l.locked_for(a, t0), Some(Duration::from_secs(900)));
        assert_eq!(
            l.locked_for(a, t0 + Duration::from_secs(899)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(l.locked_for(a, t0 + Duration::from_secs(900)), None);
        // After the lockout the count starts again.
        assert_eq!(
            l.failed(a, t0 + Duration::from_secs(901)),
            FailureOutcome::Counted { remaining: 2 }
        );
        // Other addresses are unaffected.
        assert_eq!(l.locked_for(ip("192.0.2.8"), t0), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let l = AuthLockout::new(policy(2));
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        l.failed(a, t0);
        assert_eq!(
            l.failed(a, t0 + Duration::from_secs(601)),
            FailureOutcome::Counted { remaining: 1 }
        );
    }

    #[test]
    fn success_clears_the_count() {
        let l = AuthLockout::new(policy(2));
        let t0 = Instant::now();
        let a = ip("192.0.2.7");
        l.failed(a, t0);
        l.succeeded(a);
        assert_eq!(l.failed(a, t0), FailureOutcome::Counted { remaining: 1 });
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = AuthLockout::new(policy(2));
        let t0 = Instant::now();
        l.failed(ip("2001:db8:1:2::1"), t0);
        assert_eq!(
            l.failed(ip("2001:db8:1:2:ffff::9"), t0),
            FailureOutcome::LockedOut
        );
        assert!(l.locked_for(ip("2001:db8:1:2::77"), t0).is_some());
        assert!(l.locked_for(ip("2001:db8:1:3::1"), t0).is_none());
        l.failed(ip("::ffff:192.0.2.9"), t0);
        assert_eq!(l.failed(ip("192.0.2.9"), t0), FailureOutcome::LockedOut);
    }

    #[test]
    fn threshold_zero_never_locks() {
        let l = AuthLockout::new(policy(0));
        let t0 = Instant::now();
        for _ in 0..100 {
            l.failed(ip("192.0.2.7"), t0);
        }
        assert_eq!(l.locked_for(ip("192.0.2.7"), t0), None);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn table_stays_bounded_under_an_address_flood() {
        let l = AuthLockout::new(policy(5));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            l.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i)), t0);
        }
        assert!(l.tracked() <= MAX_TRACKED);
    }
}
