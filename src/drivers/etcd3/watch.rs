//! Waiting for etcd to push a change: one watch stream opened from a known revision, read
//! until an event the caller cares about arrives. Lock waiters (a delete of the holder's key)
//! and membership watchers (any change under a group's prefix) share it.

use std::time::Duration;

use tokio::time::Instant;

use crate::clients::etcd::messages::{Event, WatchCreateRequest};

use super::link::Link;

/// Waits until etcd reports, after `revision`, an event of the watch `watch` (a key or a
/// prefix, filters) that `wanted` accepts, or until `deadline`. Returns early, letting the
/// caller look again, when the watch cannot be opened or kept up (etcd away for now, the
/// revision compacted).
pub(super) async fn wait_for_event(
    link: &Link,
    what: &str,
    watch: WatchCreateRequest,
    revision: i64,
    deadline: Option<Instant>,
    wanted: impl Fn(&Event) -> bool,
) {
    let watch = watch.from_revision(revision + 1);
    let opened = link
        .run(what, |c| {
            let watch = watch.clone();
            async move { c.watch(watch).await }
        })
        .await;
    let Ok(mut stream) = opened else {
        sleep_until_or(Duration::from_millis(200), deadline).await;
        return;
    };
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                Ok(m) => m,
                Err(_) => return,
            },
            None => stream.message().await,
        };
        match next {
            Ok(Some(resp)) => {
                if resp.canceled || resp.events.iter().any(&wanted) {
                    return;
                }
            }
            _ => {
                sleep_until_or(Duration::from_millis(100), deadline).await;
                return;
            }
        }
    }
}

async fn sleep_until_or(pause: Duration, deadline: Option<Instant>) {
    let until = Instant::now() + pause;
    tokio::time::sleep_until(deadline.map_or(until, |d| d.min(until))).await;
}
