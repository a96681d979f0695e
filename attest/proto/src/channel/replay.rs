//! The runtime's replay window for sealed requests.
//!
//! Every sealed request carries, inside its ciphertext, a random 16-byte request id and the
//! client's clock when it sealed it ([`super::crypto::RequestMeta`]). The runtime answers an
//! id at most once: it keeps the ids it has seen, refuses an id it has seen, and refuses a
//! request issued outside `now ± window`, which is what lets it forget old ids.
//!
//! The guest's clock is set by the host, so the clock must not decide what counts as a
//! replay. It only decides what may be forgotten. A *watermark* records the newest issue time
//! ever forgotten (aged out or evicted because the book was full), and every request issued
//! at or before the watermark is refused. So a forgotten id can never be answered again, even
//! if the host turns the guest clock back. What a hostile clock or a flood can do is make
//! honest requests look stale (refused with the reason), which is a denial of service the host
//! has anyway.
//!
//! Trust: ids and times come from authenticated requests but from untrusted senders (anyone
//! can seal to the runtime key); the book is bounded by [`ReplayWindow::capacity`].

use std::collections::{BTreeSet, HashSet};

/// Length of a request id.
pub const REQUEST_ID_LEN: usize = 16;
/// A request id.
pub type RequestId = [u8; REQUEST_ID_LEN];

/// Default accepted distance between the request's issue time and the runtime clock.
pub const DEFAULT_WINDOW_S: u64 = 300;
/// Default number of ids kept (16 B id + 8 B time each, plus set overhead: a few MiB).
pub const DEFAULT_CAPACITY: usize = 1 << 16;

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The id was answered before.
    #[error("request {} was already received by this runtime: a replayed request is refused", hex::encode(.0))]
    Replayed(RequestId),
    /// Issued too long ago, or at or before the newest forgotten request.
    #[error(
        "request issued at {} is too old: this runtime accepts requests issued after {} (its clock reads {}, window {window_s} s); \
         check the client's clock, then send it again (a new request gets a new id)",
        date(*.issued), date(*.accepted_after), date(*.now)
    )]
    Stale {
        /// The request's issue time (seconds since 1970).
        issued: u64,
        /// The earliest accepted issue time is one second after this.
        accepted_after: u64,
        /// The runtime clock.
        now: u64,
        /// The window.
        window_s: u64,
    },
    /// Issued in the future beyond the window.
    #[error(
        "request issued at {} is ahead of this runtime's clock ({}) by more than {window_s} s; check the client's clock",
        date(*.issued), date(*.now)
    )]
    Future {
        /// The request's issue time.
        issued: u64,
        /// The runtime clock.
        now: u64,
        /// The window.
        window_s: u64,
    },
}

fn date(secs: u64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_secs(secs))
        .map_or_else(|| format!("unix:{secs}"), |t| humantime::format_rfc3339_seconds(t).to_string())
}

/// The set of request ids seen in the window.
#[derive(Debug)]
pub struct ReplayWindow {
    window_s: u64,
    capacity: usize,
    /// Requests issued at or before this time are refused (0: none forgotten yet).
    watermark: u64,
    seen: HashSet<RequestId>,
    /// The same ids ordered by issue time, oldest first, for forgetting.
    by_time: BTreeSet<(u64, RequestId)>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW_S, DEFAULT_CAPACITY)
    }
}

impl ReplayWindow {
    /// A window of `window_s` seconds either side of the clock, keeping at most `capacity`
    /// ids (at least 1).
    pub fn new(window_s: u64, capacity: usize) -> Self {
        ReplayWindow { window_s, capacity: capacity.max(1), watermark: 0, seen: HashSet::new(), by_time: BTreeSet::new() }
    }

    /// The most ids kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Ids kept now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is kept.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Admit request `id` issued at `issued` (seconds since 1970) when the runtime clock
    /// reads `now`; on success the id is remembered and will be refused from now on.
    pub fn admit(&mut self, id: RequestId, issued: u64, now: u64) -> Result<(), ReplayError> {
        self.forget_before(now.saturating_sub(self.window_s));
        if issued > now.saturating_add(self.window_s) {
            return Err(ReplayError::Future { issued, now, window_s: self.window_s });
        }
        let accepted_after = self.watermark.max(now.saturating_sub(self.window_s).saturating_sub(1));
        if issued <= accepted_after {
            return Err(ReplayError::Stale { issued, accepted_after, now, window_s: self.window_s });
        }
        if !self.seen.insert(id) {
            return Err(ReplayError::Replayed(id));
        }
        self.by_time.insert((issued, id));
        while self.seen.len() > self.capacity {
            // Full of live ids (a flood): forget the oldest and refuse anything as old.
            let Some((t, old)) = self.by_time.pop_first() else { break };
            self.seen.remove(&old);
            self.watermark = self.watermark.max(t);
        }
        Ok(())
    }

    /// Forget ids issued before `cutoff`, raising the watermark past them.
    fn forget_before(&mut self, cutoff: u64) {
        while let Some(&(t, id)) = self.by_time.first() {
            if t >= cutoff {
                break;
            }
            self.by_time.pop_first();
            self.seen.remove(&id);
            self.watermark = self.watermark.max(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> RequestId {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&n.to_be_bytes());
        r
    }

    #[test]
    fn a_replayed_id_is_refused_and_others_pass() {
        let mut w = ReplayWindow::new(300, 100);
        let now = 1_800_000_000;
        w.admit(id(1), now, now).unwrap();
        w.admit(id(2), now - 299, now).unwrap();
        w.admit(id(3), now + 300, now).unwrap();
        let e = w.admit(id(1), now, now).unwrap_err();
        assert_eq!(e, ReplayError::Replayed(id(1)));
        assert!(e.to_string().contains("already received"), "{e}");
        assert_eq!(w.len(), 3);
        // Five seconds later id 2 has aged out of the window, and is refused as stale.
        assert!(matches!(w.admit(id(2), now - 299, now + 5), Err(ReplayError::Stale { .. })));
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn outside_the_window_is_refused_with_dates() {
        let mut w = ReplayWindow::new(300, 100);
        let now = 1_767_225_600; // 2026-01-01T00:00:00Z
        let e = w.admit(id(1), now - 301, now).unwrap_err();
        assert!(matches!(e, ReplayError::Stale { .. }));
        let s = e.to_string();
        assert!(s.contains("2025-12-31T23:54:59Z") && s.contains("2026-01-01T00:00:00Z"), "{s}");
        let e = w.admit(id(2), now + 301, now).unwrap_err();
        assert!(e.to_string().contains("ahead of this runtime's clock"), "{e}");
        assert!(w.is_empty(), "refused ids are not kept");
    }

    /// Ids age out with the clock, and turning the clock back does not make them acceptable
    /// again.
    #[test]
    fn a_forgotten_id_stays_refused_when_the_clock_goes_back() {
        let mut w = ReplayWindow::new(300, 100);
        let t0 = 1_800_000_000;
        w.admit(id(1), t0, t0).unwrap();
        // Much later: id 1 is forgotten.
        w.admit(id(2), t0 + 1000, t0 + 1000).unwrap();
        assert_eq!(w.len(), 1);
        // The host rewinds the guest clock to t0: id 1 is still refused (watermark).
        let e = w.admit(id(1), t0, t0).unwrap_err();
        assert!(matches!(e, ReplayError::Stale { accepted_after, .. } if accepted_after == t0), "{e}");
        // A fresh request after the watermark passes.
        w.admit(id(3), t0 + 1, t0).unwrap();
    }

    /// A flood beyond the capacity forgets the oldest ids, and the watermark refuses them.
    #[test]
    fn a_flood_cannot_push_an_id_out_to_replay_it() {
        let mut w = ReplayWindow::new(300, 10);
        let now = 1_800_000_000;
        w.admit(id(0), now - 100, now).unwrap();
        for n in 1..=20 {
            w.admit(id(n), now - 50 + u64::from(n), now).unwrap();
        }
        assert_eq!(w.len(), 10);
        for n in 0..=10 {
            let e = w.admit(id(n), now - 50 + u64::from(n), now).unwrap_err();
            assert!(matches!(e, ReplayError::Stale { .. } | ReplayError::Replayed(_)), "{n}: {e}");
        }
        // The victim (id 0, the oldest) specifically: stale, not answered again.
        assert!(matches!(w.admit(id(0), now - 100, now), Err(ReplayError::Stale { .. })));
        // New requests still pass.
        w.admit(id(99), now, now).unwrap();
    }
}
