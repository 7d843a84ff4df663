//! Which members a group read must check for liveness. A member lives while its beat key
//! does; the key's remaining TTL, read once, says how long it lives at least (its holder's
//! beats only push that further), so a reader checks a member again only once that time is
//! up: a group read that finds no member due costs the server one `HKEYS` (or `HGETALL`),
//! where checking every member each time cost a command per member. A dead member is still
//! pruned within its membership timeout of its last beat.
//!
//! When some member is due, every member due within half a membership timeout is checked in
//! the same batch, so the checks of a large group come together rather than one per read.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What a reader knows of members' beat keys: until when each is known to live.
pub(super) struct Liveness {
    alive_until: HashMap<Vec<u8>, Instant>,
}

/// What the server said of one member's beat key (its `PTTL`).
pub(super) enum Beat {
    /// Gone: the member is dead (and was pruned from the group).
    Gone,
    /// Lives for at least this long.
    For(Duration),
    /// Has no expiry (not one of tooz's): lives, checked again after a membership timeout.
    Forever,
}

impl Beat {
    /// From a `PTTL` answer.
    pub(super) fn from_pttl(ms: i64) -> Beat {
        match ms {
            -1 => Beat::Forever,
            ms if ms > 0 => Beat::For(Duration::from_millis(ms as u64)),
            _ => Beat::Gone,
        }
    }
}

impl Liveness {
    pub(super) fn new() -> Liveness {
        Liveness { alive_until: HashMap::new() }
    }

    /// Of `members`, those to check at `now` (`None`: none is due). `timeout` is a membership
    /// timeout: the batch takes in whoever is due within half of it.
    pub(super) fn due<'a>(&self, members: impl Iterator<Item = &'a [u8]> + Clone, timeout: Duration, now: Instant) -> Option<Vec<&'a [u8]>> {
        let known = |m: &[u8], by: Instant| self.alive_until.get(m).is_some_and(|t| *t > by);
        if members.clone().all(|m| known(m, now)) {
            return None;
        }
        let soon = now + timeout / 2;
        Some(members.filter(|m| !known(m, soon)).collect())
    }

    /// Records what a check sent at `sent` found, and forgets members known to live no longer.
    pub(super) fn found(&mut self, sent: Instant, timeout: Duration, answers: impl Iterator<Item = (Vec<u8>, Beat)>) {
        for (member, beat) in answers {
            match beat {
                Beat::Gone => {
                    self.alive_until.remove(&member);
                }
                Beat::For(left) => {
                    self.alive_until.insert(member, sent + left);
                }
                Beat::Forever => {
                    self.alive_until.insert(member, sent + timeout);
                }
            }
        }
        self.alive_until.retain(|_, until| *until > sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_checked_again_only_when_their_beat_may_have_lapsed() {
        let t = Duration::from_secs(30);
        let mut live = Liveness::new();
        let names: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        // Nothing known yet: all are due.
        let sent = Instant::now();
        assert_eq!(live.due(names.iter().copied(), t, sent).unwrap(), names);
        live.found(
            sent,
            t,
            vec![(b"a".to_vec(), Beat::For(Duration::from_secs(29))), (b"b".to_vec(), Beat::For(Duration::from_secs(5))), (b"c".to_vec(), Beat::Gone)]
                .into_iter(),
        );
        let alive: Vec<&[u8]> = vec![b"a", b"b"];
        assert!(live.due(alive.iter().copied(), t, sent + Duration::from_secs(1)).is_none(), "both known to live a while yet");
        // b is due; a lives 23 s more, beyond half a timeout: not checked with it.
        let later = sent + Duration::from_secs(6);
        assert_eq!(live.due(alive.iter().copied(), t, later).unwrap(), vec![b"b" as &[u8]]);
        // a new member is due at once, and a (13 s left, under half a timeout) comes along.
        let later = sent + Duration::from_secs(16);
        let with_d: Vec<&[u8]> = vec![b"a", b"b", b"d"];
        assert_eq!(live.due(with_d.iter().copied(), t, later).unwrap(), with_d);
        // A check forgets what is past.
        live.found(later, t, std::iter::empty());
        assert_eq!(live.alive_until.len(), 1);
    }
}
