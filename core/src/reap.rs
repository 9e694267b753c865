//! Reaping: ending a session on its backend when the router ends it itself.
//!
//! "Many clients never send DELETE: idle expiry is the only cleanup they get." When the
//! router drops a record without the client's `DELETE` (the idle TTL ran out, or the
//! backend's drain timeout did), the backend still holds the session, and its memory,
//! until its own expiry, if it has one. So the router sends the `DELETE` the client
//! never sent: "Clients that no longer need a particular session ... SHOULD send an
//! HTTP DELETE to the MCP endpoint with the Mcp-Session-Id header, to explicitly
//! terminate the session."
//!
//! This module decides; it performs nothing. [`reaps`] says which ends are reaped,
//! [`Reaper`] is the bounded queue with its concurrency and rate limits and the one
//! retry, [`write_delete`] writes the request's bytes, and [`outcome`] reads the
//! backend's status. A driver pushes jobs, takes them with [`Reaper::poll_job`] (at most
//! `concurrency` out at once, at most `rate` started per second), sends each request on
//! a connection of its own (never one a client waits on), and reports back with
//! [`Reaper::complete`].
//!
//! What the request carries: the session's upstream id as `Mcp-Session-Id`, `Host`
//! (the backend's authority), and the configured [`ReapSettings::headers`], nothing
//! else. The client's `Authorization` and other request headers are not kept in
//! session records (that would put credentials in the store, and a byte string per
//! session on the hot path); a backend that wants a credential on `DELETE` gets a
//! static one through `--reap-header`. `MCP-Protocol-Version` is not kept either: "If
//! the server does not receive an MCP-Protocol-Version header, and has no other way to
//! identify the version ... the server SHOULD assume protocol version 2025-03-26", and
//! `DELETE` means the same in every version; `--reap-header` can add one.

use crate::config::Backend;
use crate::conn::EndCause;
use crate::mcp::SessionKey;
use crate::router::BackendId;
use crate::store::Era;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Whether the router sends `DELETE` upstream for a session it ended with `cause`.
/// Only ends the backend cannot know of (no client `DELETE`, no backend `404`, no
/// backend death; a removed backend's sessions only when the frontend found it still
/// answering), and only Streamable HTTP sessions: a legacy SSE session has no `DELETE`
/// (it ends when its stream closes).
pub fn reaps(era: Era, cause: EndCause) -> bool {
    era == Era::Streamable
        && matches!(
            cause,
            EndCause::Expired | EndCause::DrainTimeout | EndCause::BackendRemoved
        )
}

/// Bounds and contents of reaping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReapSettings {
    /// Off: no `DELETE` is sent (the records still end).
    pub enabled: bool,
    /// Most `DELETE`s in flight at once.
    pub concurrency: usize,
    /// Most `DELETE`s started per second (0: no limit).
    pub rate: u32,
    /// Most jobs waiting; past it a job is dropped (counted as `dropped`).
    pub queue: usize,
    /// The MCP endpoint's path on the backend, after its base path.
    pub path: String,
    /// Extra header fields sent with every `DELETE` (`Name`, `value`).
    pub headers: Vec<(String, String)>,
    /// Wait before the one retry of a failed `DELETE`.
    pub retry_after: Duration,
    /// Shared store: how often each replica claims expired sessions from the store's
    /// expiry index.
    pub claim_interval: Duration,
    /// Shared store: how long a claim is held before another replica may take it over
    /// (a replica that died between its claim and its acknowledgement).
    pub claim_lease: Duration,
}

impl Default for ReapSettings {
    fn default() -> Self {
        ReapSettings {
            enabled: true,
            concurrency: 4,
            rate: 100,
            queue: 10_000,
            path: "/mcp".into(),
            headers: Vec::new(),
            retry_after: Duration::from_secs(1),
            claim_interval: Duration::from_secs(1),
            claim_lease: Duration::from_secs(60),
        }
    }
}

/// One session to end on its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReapJob {
    /// The session's upstream id (what the backend minted).
    pub session: SessionKey,
    /// The backend that holds it.
    pub backend: BackendId,
    /// Why the router ended it.
    pub cause: EndCause,
    /// Attempts made so far.
    pub attempts: u8,
    /// Claimed from a shared store's expiry index: acknowledge it there once done
    /// (whatever the result), so that no other replica takes it over.
    pub claimed: bool,
    /// The id the claim is acknowledged by when it is not `session` (a session that
    /// failed over on a shared store: the client's id, while the `DELETE` names the new
    /// upstream id).
    pub ack: Option<SessionKey>,
}

impl ReapJob {
    /// A job not yet attempted.
    pub fn new(session: SessionKey, backend: BackendId, cause: EndCause) -> ReapJob {
        ReapJob {
            session,
            backend,
            cause,
            attempts: 0,
            claimed: false,
            ack: None,
        }
    }
}

/// How a reap ended (the `result` label of `mcp_router_sessions_reaped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReapResult {
    /// The backend answered 2xx: it ended the session.
    Deleted,
    /// The backend answered 404 (it no longer had the session) or 405 (it does not
    /// allow `DELETE`): nothing more to do.
    Gone,
    /// No answer, or another status, twice.
    Failed,
    /// The queue was full, or the backend is no longer configured: not sent.
    Dropped,
}

impl ReapResult {
    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ReapResult::Deleted => "deleted",
            ReapResult::Gone => "gone",
            ReapResult::Failed => "failed",
            ReapResult::Dropped => "dropped",
        }
    }

    /// Every result, for rendering.
    pub const ALL: [ReapResult; 4] = [
        ReapResult::Deleted,
        ReapResult::Gone,
        ReapResult::Failed,
        ReapResult::Dropped,
    ];
}

/// What a backend's answer means: done with a result, or worth one more try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Finished.
    Done(ReapResult),
    /// Try again (once).
    Retry,
}

/// The meaning of the backend's status (`None`: no answer: connect failed, timed out,
/// or the response was unreadable).
pub fn outcome(status: Option<u16>) -> Outcome {
    match status {
        Some(200..=299) => Outcome::Done(ReapResult::Deleted),
        Some(404 | 405) => Outcome::Done(ReapResult::Gone),
        _ => Outcome::Retry,
    }
}

/// Write the `DELETE` for `session` to `backend` into `out`: HTTP/1.1, no body, the
/// connection closed after the answer. Header values were checked at configuration
/// (visible ASCII and spaces), and session ids are visible ASCII.
pub fn write_delete(
    out: &mut Vec<u8>,
    backend: &Backend,
    session: &SessionKey,
    settings: &ReapSettings,
) {
    out.extend_from_slice(b"DELETE ");
    out.extend_from_slice(backend.base_path.as_bytes());
    out.extend_from_slice(settings.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(backend.authority.as_bytes());
    out.extend_from_slice(b"\r\nMcp-Session-Id: ");
    out.extend_from_slice(session.as_bytes());
    for (k, v) in &settings.headers {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The status code of a response that starts with `head` (`HTTP/1.x NNN ...`).
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The reap queue: bounded, with at most `concurrency` jobs out at once, at most `rate`
/// started per second (a burst of up to `concurrency`, or `rate` if smaller), and one retry per job after
/// `retry_after`. Jobs go out in the order they came, retries first once due.
#[derive(Debug)]
pub struct Reaper {
    settings: ReapSettings,
    queue: VecDeque<ReapJob>,
    /// Failed once, due again at the instant (FIFO: one constant delay).
    retries: VecDeque<(Instant, ReapJob)>,
    in_flight: usize,
    /// The rate's theoretical arrival time (GCRA): a job may start when it is at most
    /// `concurrency` intervals ahead of `now`.
    tat: Option<Instant>,
}

impl Reaper {
    /// An empty queue with these bounds.
    pub fn new(settings: ReapSettings) -> Reaper {
        Reaper {
            settings,
            queue: VecDeque::new(),
            retries: VecDeque::new(),
            in_flight: 0,
            tat: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ReapSettings {
        &self.settings
    }

    /// Jobs waiting (not in flight), retries included.
    pub fn waiting(&self) -> usize {
        self.queue.len() + self.retries.len()
    }

    /// Jobs handed out and not completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queue a job. `Some(Dropped)` when the queue is full (or reaping is off): the job
    /// is not kept, and the caller counts it.
    #[must_use]
    pub fn push(&mut self, job: ReapJob) -> Option<ReapResult> {
        if !self.settings.enabled || self.waiting() >= self.settings.queue {
            return Some(ReapResult::Dropped);
        }
        self.queue.push_back(job);
        None
    }

    fn interval(&self) -> Option<Duration> {
        (self.settings.rate > 0).then(|| Duration::from_secs(1) / self.settings.rate)
    }

    /// The earliest instant the rate lets a job start.
    fn rate_ready_at(&self) -> Option<Instant> {
        let iv = self.interval()?;
        let burst = self
            .settings
            .concurrency
            .min(self.settings.rate as usize)
            .max(1);
        let tolerance = iv * (burst - 1) as u32;
        self.tat.map(|t| t.checked_sub(tolerance).unwrap_or(t))
    }

    /// The next job to send now, if the bounds allow one.
    pub fn poll_job(&mut self, now: Instant) -> Option<ReapJob> {
        if self.in_flight >= self.settings.concurrency.max(1) {
            return None;
        }
        if self.rate_ready_at().is_some_and(|t| t > now) {
            return None;
        }
        let job = if self.retries.front().is_some_and(|(at, _)| *at <= now) {
            self.retries.pop_front().map(|(_, j)| j)
        } else {
            self.queue.pop_front()
        }?;
        if let Some(iv) = self.interval() {
            self.tat = Some(self.tat.map_or(now, |t| t.max(now)) + iv);
        }
        self.in_flight += 1;
        Some(job)
    }

    /// When [`Reaper::poll_job`] may next yield a job that it does not yield now
    /// (`None`: nothing waits on time: the queue is empty or only a completion can
    /// free a slot).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight >= self.settings.concurrency.max(1) {
            return None;
        }
        let due = if !self.queue.is_empty() {
            None
        } else {
            Some(self.retries.front()?.0)
        };
        match (due, self.rate_ready_at()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// A job handed out by [`Reaper::poll_job`] cannot be sent (its backend is no
    /// longer configured): it is over, [`ReapResult::Dropped`].
    pub fn abandon(&mut self, job: ReapJob) -> ReapResult {
        drop(job);
        self.in_flight = self.in_flight.saturating_sub(1);
        ReapResult::Dropped
    }

    /// A job handed out by [`Reaper::poll_job`] got `status` (`None`: no answer).
    /// Returns its result, or `None` when it was queued for its one retry.
    pub fn complete(
        &mut self,
        mut job: ReapJob,
        status: Option<u16>,
        now: Instant,
    ) -> Option<ReapResult> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome(status) {
            Outcome::Done(r) => Some(r),
            Outcome::Retry if job.attempts == 0 => {
                job.attempts = 1;
                self.retries
                    .push_back((now + self.settings.retry_after, job));
                None
            }
            Outcome::Retry => Some(ReapResult::Failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SessionKey {
        SessionKey::new(s.as_bytes(), 256).unwrap()
    }

    fn job(s: &str) -> ReapJob {
        ReapJob::new(key(s), BackendId(0), EndCause::Expired)
    }

    #[test]
    fn only_ends_the_backend_cannot_see_are_reaped() {
        assert!(reaps(Era::Streamable, EndCause::Expired));
        assert!(reaps(Era::Streamable, EndCause::DrainTimeout));
        assert!(reaps(Era::Streamable, EndCause::BackendRemoved));
        assert!(!reaps(Era::LegacySse, EndCause::Expired));
        for c in [
            EndCause::Deleted,
            EndCause::BackendNotFound,
            EndCause::BackendDown,
            EndCause::StreamClosed,
            EndCause::UnknownBackend,
        ] {
            assert!(!reaps(Era::Streamable, c), "{c:?}");
        }
    }

    #[test]
    fn statuses_404_and_405_are_done_others_retry() {
        assert_eq!(outcome(Some(200)), Outcome::Done(ReapResult::Deleted));
        assert_eq!(outcome(Some(204)), Outcome::Done(ReapResult::Deleted));
        assert_eq!(outcome(Some(404)), Outcome::Done(ReapResult::Gone));
        assert_eq!(outcome(Some(405)), Outcome::Done(ReapResult::Gone));
        assert_eq!(outcome(Some(400)), Outcome::Retry);
        assert_eq!(outcome(Some(503)), Outcome::Retry);
        assert_eq!(outcome(None), Outcome::Retry);
        assert_eq!(parse_status(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK\r\n"), None);
        assert_eq!(parse_status(b"garbage"), None);
    }

    #[test]
    fn the_request_carries_the_upstream_id_host_and_configured_headers_only() {
        let b = Backend::parse("http://127.0.0.1:3001/base", None).unwrap();
        let s = ReapSettings {
            headers: vec![("Authorization".into(), "Bearer reaper".into())],
            ..ReapSettings::default()
        };
        let mut out = Vec::new();
        write_delete(&mut out, &b, &key("abc-123"), &s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DELETE /base/mcp HTTP/1.1\r\nHost: 127.0.0.1:3001\r\nMcp-Session-Id: abc-123\r\n\
             Authorization: Bearer reaper\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn concurrency_is_bounded_and_a_failure_is_retried_once() {
        let t = Instant::now();
        let mut r = Reaper::new(ReapSettings {
            concurrency: 2,
            rate: 0,
            ..ReapSettings::default()
        });
        for s in ["a", "b", "c"] {
            assert_eq!(r.push(job(s)), None);
        }
        let a = r.poll_job(t).unwrap();
        let b = r.poll_job(t).unwrap();
        assert_eq!(r.poll_job(t), None, "two in flight at most");
        assert_eq!(r.poll_timeout(), None, "only a completion frees a slot");
        assert_eq!(r.complete(b, Some(404), t), Some(ReapResult::Gone));
        let c = r.poll_job(t).unwrap();
        assert_eq!(c.session, key("c"));
        // a fails: queued for one retry, a second later
        assert_eq!(r.complete(a, None, t), None);
        assert_eq!(r.poll_job(t), None);
        let later = t + Duration::from_secs(1);
        assert_eq!(r.poll_timeout(), Some(later));
        let a = r.poll_job(later).unwrap();
        assert_eq!((a.session.as_bytes(), a.attempts), (&b"a"[..], 1));
        assert_eq!(r.complete(a, Some(500), later), Some(ReapResult::Failed));
        assert_eq!(r.complete(c, Some(200), later), Some(ReapResult::Deleted));
        assert_eq!((r.waiting(), r.in_flight()), (0, 0));
    }

    #[test]
    fn rate_and_queue_are_bounded() {
        let t = Instant::now();
        let mut r = Reaper::new(ReapSettings {
            concurrency: 100,
            rate: 10,
            queue: 50,
            ..ReapSettings::default()
        });
        for i in 0..50 {
            assert_eq!(r.push(job(&format!("s{i}"))), None);
        }
        assert_eq!(r.push(job("over")), Some(ReapResult::Dropped));
        // over 2 s at 10/s: the burst (bounded by the concurrency) plus 20 more
        let mut started = 0;
        let mut now = t;
        while now <= t + Duration::from_secs(2) {
            while let Some(j) = r.poll_job(now) {
                started += 1;
                assert_eq!(r.complete(j, Some(200), now), Some(ReapResult::Deleted));
            }
            now += Duration::from_millis(10);
        }
        assert_eq!(
            started, 30,
            "in 2 s at 10/s: a burst of 10, then 20 at the rate"
        );
        assert_eq!(r.waiting(), 20);
        let mut r = Reaper::new(ReapSettings {
            concurrency: 1,
            rate: 10,
            ..ReapSettings::default()
        });
        for i in 0..5 {
            assert_eq!(r.push(job(&format!("s{i}"))), None);
        }
        let mut times = Vec::new();
        let mut now = t;
        while times.len() < 5 {
            if let Some(j) = r.poll_job(now) {
                times.push(now);
                let _ = r.complete(j, Some(200), now);
            } else {
                now = r.poll_timeout().expect("jobs wait on the rate");
            }
        }
        for w in times.windows(2) {
            assert!(w[1] - w[0] >= Duration::from_millis(100), "{times:?}");
        }
        let off = Reaper::new(ReapSettings {
            enabled: false,
            ..ReapSettings::default()
        })
        .push(job("x"));
        assert_eq!(off, Some(ReapResult::Dropped));
    }
}
