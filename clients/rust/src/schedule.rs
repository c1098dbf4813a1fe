//! The reconnect schedule: exponential backoff with jitter over a list of edges, tried in
//! order. Sans-IO: the caller passes the time and a random number generator.
//!
//! Attempt 0 after a working connection goes at once (or after the server's
//! `reconnect_after_ms` hint) to the edge that worked; each failed attempt moves to the next
//! edge in the list and doubles the delay from [`Backoff::base`] up to [`Backoff::max`], each
//! delay jittered to between half and all of it, so that clients dropped together do not
//! come back together. A `DISCONNECT` naming `reconnect_to` puts that address first, once.

use std::time::{Duration, Instant};

use rand::Rng;

/// The delays of the reconnect schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second attempt (the first goes at once).
    pub base: Duration,
    /// The largest delay between attempts.
    pub max: Duration,
}

impl Default for Backoff {
    /// 500 ms doubling up to 30 s.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based since the last working connection), before
    /// jitter: 0, base, 2·base, 4·base, … at most `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(attempt - 1).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Where and when the next connection attempt goes.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    edges: Vec<String>,
    backoff: Backoff,
    /// The edge the next attempt uses (index into `edges`).
    next_edge: usize,
    /// Failed attempts since the last working connection.
    attempt: u32,
    /// A one-off address to try first (`DISCONNECT.reconnect_to`).
    preferred: Option<String>,
    /// The server's delay hint for the next attempt.
    hint: Option<Duration>,
}

impl Schedule {
    pub(crate) fn new(edges: Vec<String>, backoff: Backoff) -> Self {
        Schedule {
            edges,
            backoff,
            next_edge: 0,
            attempt: 0,
            preferred: None,
            hint: None,
        }
    }

    /// Replaces the edge list (e.g. a fresh `GET /api/v1/edges`); the next attempt starts at
    /// its first edge.
    pub(crate) fn set_edges(&mut self, edges: Vec<String>) {
        self.edges = edges;
        self.next_edge = 0;
    }

    /// The next attempt: the address to dial and when, from `now`. `None` when there is no
    /// edge to try.
    pub(crate) fn next(&mut self, now: Instant, rng: &mut impl Rng) -> Option<(String, Instant)> {
        let delay = match self.hint.take() {
            Some(hint) => jitter(hint, rng),
            None => jitter(self.backoff.delay(self.attempt), rng),
        };
        let at = now + delay;
        if let Some(addr) = self.preferred.take() {
            return Some((addr, at));
        }
        let edge = self
            .edges
            .get(self.next_edge % self.edges.len().max(1))?
            .clone();
        Some((edge, at))
    }

    /// The attempt failed (or the connection died before it authenticated): the next one
    /// waits longer and goes to the next edge.
    pub(crate) fn failed(&mut self) {
        self.attempt = self.attempt.saturating_add(1);
        if !self.edges.is_empty() {
            self.next_edge = (self.next_edge + 1) % self.edges.len();
        }
    }

    /// A connection authenticated: the next loss retries this edge at once.
    pub(crate) fn succeeded(&mut self) {
        self.attempt = 0;
    }

    /// The server asked to reconnect after `after`, preferably to `to`.
    pub(crate) fn hint(&mut self, after: Duration, to: Option<String>) {
        self.hint = Some(after);
        self.preferred = to.filter(|t| !t.is_empty());
    }

    /// Failed attempts since the last working connection.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Between half of `d` and all of it.
fn jitter(d: Duration, rng: &mut impl Rng) -> Duration {
    if d.is_zero() {
        return d;
    }
    let half = d / 2;
    half + half.mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn edges() -> Vec<String> {
        vec!["raw://a:1".into(), "raw://b:1".into(), "raw://c:1".into()]
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<_> = (0..7).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn attempts_go_over_the_edges_in_order_with_jittered_growing_delays() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut s = Schedule::new(edges(), backoff);
        let mut rng = StdRng::seed_from_u64(7);
        let now = Instant::now();
        let mut seen = Vec::new();
        for attempt in 0..6 {
            let (edge, at) = s.next(now, &mut rng).unwrap();
            let delay = at - now;
            let full = backoff.delay(attempt);
            assert!(
                delay >= full / 2 && delay <= full,
                "{attempt}: {delay:?} of {full:?}"
            );
            seen.push(edge);
            s.failed();
        }
        assert_eq!(
            seen,
            [
                "raw://a:1",
                "raw://b:1",
                "raw://c:1",
                "raw://a:1",
                "raw://b:1",
                "raw://c:1"
            ]
        );
        // A working connection resets the delay and keeps its edge.
        s.succeeded();
        let (edge, at) = s.next(now, &mut rng).unwrap();
        assert_eq!((edge.as_str(), at), ("raw://a:1", now));
    }

    #[test]
    fn jitter_spreads_clients_dropped_together() {
        let backoff = Backoff::default();
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|_| {
                let mut s = Schedule::new(edges(), backoff);
                s.failed();
                s.next(now, &mut rng).unwrap().1 - now
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn reconnect_to_goes_first_once_after_the_hinted_delay() {
        let mut s = Schedule::new(edges(), Backoff::default());
        let mut rng = StdRng::seed_from_u64(3);
        let now = Instant::now();
        s.hint(Duration::from_secs(2), Some("raw://z:9".into()));
        let (edge, at) = s.next(now, &mut rng).unwrap();
        assert_eq!(edge, "raw://z:9");
        assert!(at - now >= Duration::from_secs(1) && at - now <= Duration::from_secs(2));
        s.failed();
        assert_eq!(s.next(now, &mut rng).unwrap().0, "raw://b:1");
    }

    #[test]
    fn no_edges_no_attempt() {
        let mut s = Schedule::new(Vec::new(), Backoff::default());
        assert!(
            s.next(Instant::now(), &mut StdRng::seed_from_u64(0))
                .is_none()
        );
    }
}
