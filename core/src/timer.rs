//! A connection's deadlines in one table, in the shape of quinn-proto's
//! `connection/timer.rs`: one [`Timer`] enum names each, a fixed array holds them, and
//! the next wake-up is the earliest of those that apply in the current phase.

use std::time::Instant;

/// Every deadline a [`Conn`](crate::Conn) can arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Idle between requests: close the connection (keep-alive timeout).
    KeepAlive = 0,
    /// Idle with part of a request head read: answer 408.
    Head = 1,
    /// Connecting to the backend: give up (and fail over or answer 502).
    Connect = 2,
    /// The request went upstream: the response head must come by then (504).
    Response = 3,
    /// Body bytes stopped flowing, either way: abort the exchange.
    BodyIdle = 4,
    /// An open stream of a session: slide the record's idle TTL in the store.
    Touch = 5,
    /// A write to the client is stalled: give up on the client.
    ClientSend = 6,
    /// A write upstream is stalled: give up on the backend (504).
    UpstreamSend = 7,
}

impl Timer {
    /// How many there are.
    const COUNT: usize = 8;
    /// The deadlines of one exchange: all stopped when the next request begins.
    const EXCHANGE: [Timer; 4] = [
        Timer::Connect,
        Timer::Response,
        Timer::BodyIdle,
        Timer::Touch,
    ];
}

/// When each [`Timer`] fires (`None`: not armed).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    /// Arm `t` for `at` (replacing an earlier setting).
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.at[t as usize] = Some(at);
    }

    /// When `t` fires, if armed.
    pub(crate) fn get(&self, t: Timer) -> Option<Instant> {
        self.at[t as usize]
    }

    /// Disarm `t`.
    pub(crate) fn stop(&mut self, t: Timer) {
        self.at[t as usize] = None;
    }

    /// Whether `t` is armed.
    pub(crate) fn is_set(&self, t: Timer) -> bool {
        self.at[t as usize].is_some()
    }

    /// Whether `t` is armed and its time has come.
    pub(crate) fn expired(&self, t: Timer, now: Instant) -> bool {
        self.at[t as usize].is_some_and(|d| now >= d)
    }

    /// Disarm the deadlines of the exchange that ended.
    pub(crate) fn stop_exchange(&mut self) {
        for t in Timer::EXCHANGE {
            self.stop(t);
        }
    }

    /// The earliest of `timers` that is armed.
    pub(crate) fn earliest(&self, timers: impl IntoIterator<Item = Timer>) -> Option<Instant> {
        timers.into_iter().filter_map(|t| self.get(t)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_table_arms_stops_and_finds_the_earliest() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.earliest([Timer::KeepAlive, Timer::Head]), None);
        t.set(Timer::KeepAlive, now + Duration::from_secs(5));
        t.set(Timer::Head, now + Duration::from_secs(2));
        t.set(Timer::Response, now + Duration::from_secs(1));
        assert_eq!(
            t.earliest([Timer::KeepAlive, Timer::Head]),
            Some(now + Duration::from_secs(2))
        );
        assert!(!t.expired(Timer::Head, now + Duration::from_secs(1)));
        assert!(t.expired(Timer::Head, now + Duration::from_secs(2)));
        t.stop_exchange();
        assert!(!t.is_set(Timer::Response) && t.is_set(Timer::Head));
        t.stop(Timer::Head);
        assert!(!t.expired(Timer::Head, now + Duration::from_secs(9)));
    }
}
