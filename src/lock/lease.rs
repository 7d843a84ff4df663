//! The holder's side of a lease (a lock key with a TTL on redis, memcached or etcd): when its
//! own clock says the holding ends, and how a renewal is given up on and tried again.
//!
//! The server starts a lease when the request that set or extended it *arrives*, which is
//! never earlier than when it was sent; so a holder that starts its clock when it *sends* the
//! request, and stops short of the full lease by a margin, is never behind the server. When
//! its clock ends without an answered renewal the holding is lost on this side (`fate.rs`),
//! before the server can give the lock to anyone else.
//!
//! The margin ([`margin`]) is 100 ms plus 2% of the lease:
//!
//! * clock rates: the server's and the holder's clocks may run at slightly different rates.
//!   Hosts kept by NTP differ by well under 0.05%, an undisciplined quartz clock by about
//!   0.01%; 2% covers a clock being slewed hard (adjtime slews at most 0.05%) many times over;
//! * telling: the watchdog is a timer on the runtime, which a loaded host may run late by
//!   some milliseconds, and `on_lost` callbacks reach Python through a thread that must take
//!   the GIL; 100 ms leaves room for both before the server lets the key go.
//!
//! memcached keeps time in whole seconds (an item set with TTL n may expire up to a second
//! before n seconds have passed), so its holders stop one second sooner still
//! ([`Lease::coarse`]).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// What the holder's clock leaves off a lease of length `lease` (see the module notes).
pub fn margin(lease: Duration) -> Duration {
    Duration::from_millis(100) + lease / 50
}

/// A lease as its holder reckons it.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    /// The TTL the server is given.
    pub length: Duration,
    /// How much sooner than `length` the server may drop it (its clock's granularity).
    pub early: Duration,
}

impl Lease {
    /// A lease the server times to the millisecond (redis `PX`) or later (etcd).
    pub fn exact(length: Duration) -> Lease {
        Lease { length, early: Duration::ZERO }
    }

    /// A lease the server times in whole seconds (memcached).
    pub fn coarse(length: Duration) -> Lease {
        Lease { length, early: Duration::from_secs(1) }
    }

    /// The holder's deadline for a lease set or extended by a request sent at `sent`.
    pub fn deadline(&self, sent: Instant) -> Instant {
        sent + self.length.saturating_sub(self.early + margin(self.length))
    }

    /// How often a holder renews: at a third of the lease, as etcd's keep-alive and
    /// Redisson's watchdog do, so two renewals can fail before the lease is gone.
    pub fn renew_every(&self) -> Duration {
        (self.length.saturating_sub(self.early) / 3).max(Duration::from_millis(10))
    }
}

/// Runs a renewal (`attempt`) that must be answered before `deadline` (the earliest holder's
/// deadline among the leases it renews): each try gets a third of the time left, and one not
/// answered by then is dropped and `reset` is called (drop the connection it went out on, so
/// the next try connects afresh instead of queueing behind a request the network swallowed),
/// then tried again. Errors other than a connection's or a late answer's end the renewal at
/// once; past the deadline, the last error.
pub async fn renew_by<T, F, Fut>(deadline: Instant, mut reset: impl FnMut(), mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    const FLOOR: Duration = Duration::from_millis(50);
    loop {
        let now = Instant::now();
        let budget = (deadline.saturating_duration_since(now) / 3).max(FLOOR);
        let err = match tokio::time::timeout(budget, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e @ (Error::Connection(_) | Error::Timeout(_)))) => e,
            Ok(Err(e)) => return Err(e),
            Err(_) => Error::Connection(format!("a lease renewal was not answered within {:.3}s", budget.as_secs_f64())),
        };
        reset();
        if Instant::now() + FLOOR > deadline {
            return Err(err);
        }
        // A refused or reset connection fails at once: do not spin on it.
        tokio::time::sleep_until((now + FLOOR).min(deadline)).await;
    }
}

/// Runs `attempt` — what tidies up after a holding lost on the holder's clock (deleting its
/// key if it is still the holder's, revoking its lease) — until the server answers it: each
/// try given a renewal period, `reset` (drop the stuck connection) after one that was not
/// answered, a pause between tries. Gives up a lease and a half from now: by then no
/// extension of the holder's can keep the key alive, and it lapses by itself. Whether it was
/// answered.
pub async fn until_answered<T, F, Fut>(lease: Lease, mut reset: impl FnMut(), mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let give_up = Instant::now() + lease.length * 3 / 2;
    while Instant::now() < give_up {
        if let Ok(Ok(_)) = tokio::time::timeout(lease.renew_every(), attempt()).await {
            return true;
        }
        reset();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_holder_stops_short_of_the_server() {
        let sent = Instant::now();
        let three = Duration::from_secs(3);
        assert_eq!(margin(three), Duration::from_millis(160));
        assert_eq!(Lease::exact(three).deadline(sent), sent + Duration::from_millis(2840));
        assert_eq!(Lease::coarse(three).deadline(sent), sent + Duration::from_millis(1840));
        assert_eq!(Lease::exact(three).renew_every(), Duration::from_secs(1));
        // A lease shorter than the margin ends at once on the holder's side.
        assert_eq!(Lease::coarse(Duration::from_secs(1)).deadline(sent), sent);
    }

    #[test]
    fn an_unanswered_renewal_is_dropped_and_tried_again() {
        crate::runtime::block_on(async {
            let tries = AtomicUsize::new(0);
            let resets = AtomicUsize::new(0);
            let began = Instant::now();
            let deadline = began + Duration::from_millis(900);
            let got = renew_by(
                deadline,
                || {
                    resets.fetch_add(1, Ordering::SeqCst);
                },
                || async {
                    // The first try is swallowed by the network; the second is answered.
                    if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok(7)
                },
            )
            .await
            .unwrap();
            assert_eq!(got, 7);
            assert_eq!(resets.load(Ordering::SeqCst), 1);
            // The first try had a third of the time left (300 ms), not the whole of it.
            let took = began.elapsed();
            assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(600), "{took:?}");

            // Tidying up: tried again (after a reset) until answered.
            let tries = AtomicUsize::new(0);
            let resets = AtomicUsize::new(0);
            let lease = Lease::exact(Duration::from_millis(600));
            let answered = until_answered(
                lease,
                || {
                    resets.fetch_add(1, Ordering::SeqCst);
                },
                || async {
                    if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(Error::Connection("refused".into()));
                    }
                    Ok(())
                },
            )
            .await;
            assert!(answered);
            assert_eq!((tries.load(Ordering::SeqCst), resets.load(Ordering::SeqCst)), (3, 2));
            // Never answered: given up a lease and a half later.
            let began = Instant::now();
            assert!(!until_answered(lease, || {}, || std::future::pending::<Result<()>>()).await);
            let took = began.elapsed();
            assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(1300), "{took:?}");

            // Never answered: gives up at the deadline, not later.
            let began = Instant::now();
            let out: Result<()> =
                renew_by(began + Duration::from_millis(400), || {}, || std::future::pending::<Result<()>>()).await;
            assert!(matches!(out, Err(Error::Connection(_))));
            assert!(began.elapsed() < Duration::from_millis(550), "{:?}", began.elapsed());
        });
    }
}
