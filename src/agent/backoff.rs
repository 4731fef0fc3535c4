//! Exponential back-off per key, as kubelet's `flowcontrol.Backoff`: used for restarting
//! crashed containers (CrashLoopBackOff: 10 s doubling to 5 min) and for image pulls
//! (ImagePullBackOff).

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Entry {
    delay: Duration,
    /// When the event that started the current delay happened.
    since: Instant,
}

/// Back-off state per key.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Backoff {
    /// Back-off starting at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    /// The remaining wait if `key` is backing off after an event at `event`; None when an
    /// attempt may go ahead now.
    pub fn remaining(&self, key: &str, event: Instant, now: Instant) -> Option<Duration> {
        let e = self.entries.get(key)?;
        let until = event.max(e.since) + e.delay;
        (now < until).then(|| until - now)
    }

    /// The current delay of `key` (for messages such as "back-off 20s").
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Records an attempt after an event at `event`: the first delay is `initial`, each
    /// later one doubles up to `max`; an entry quiet for twice `max` starts over.
    pub fn next(&mut self, key: &str, event: Instant, now: Instant) {
        let (initial, max) = (self.initial, self.max);
        let fresh = Entry {
            delay: initial,
            since: event,
        };
        let e = self.entries.entry(key.to_string()).or_insert(fresh);
        if now.saturating_duration_since(e.since) > max * 2 {
            *e = fresh;
        } else if e.since != event {
            e.delay = (e.delay * 2).min(max);
            e.since = event;
        }
    }

    /// Forgets `key` (a container that ran long enough, a pod that is gone).
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets every key starting with `prefix`.
    pub fn reset_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_starts_over_when_quiet() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(10), s(300));
        let t0 = Instant::now();
        assert_eq!(
            b.remaining("k", t0, t0),
            None,
            "the first attempt is immediate"
        );
        b.next("k", t0, t0);
        assert_eq!(b.remaining("k", t0, t0 + s(4)), Some(s(6)));
        assert_eq!(b.remaining("k", t0, t0 + s(10)), None);
        let mut event = t0;
        let mut delays = Vec::new();
        for i in 1..8 {
            event = t0 + s(i * 2);
            b.next("k", event, event);
            delays.push(b.delay("k").unwrap().as_secs());
        }
        assert_eq!(delays, vec![20, 40, 80, 160, 300, 300, 300]);
        // The same event twice does not double again.
        b.next("k", event, event);
        assert_eq!(b.delay("k"), Some(s(300)));
        let later = event + s(700);
        b.next("k", later, later);
        assert_eq!(b.delay("k"), Some(s(10)));
        b.reset_prefix("k");
        assert_eq!(b.delay("k"), None);
    }
}
