//! The connection to an etcd cluster: one gRPC channel per endpoint, a preferred endpoint,
//! and failover to the next one when a call cannot get through.
//!
//! Every call has the time budget of the `timeout` option. A call whose member cannot be
//! reached (connection refused or lost) goes on at once to the next endpoint; one that reached
//! a member which could not serve it just then (no leader during an election, a late answer)
//! too, and the endpoints are then tried again in rounds separated by a short, growing pause
//! until the budget is spent. When no endpoint could be reached at all in a round, the call
//! fails at once with `Error::Connection` rather than waiting out the budget. A late answer
//! gives `Error::Timeout`.
//!
//! Channels belong to the tokio runtime they were made on; a forked child (new runtime
//! generation) drops the inherited ones without touching them and makes its own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{timeout_at, Instant};
use tonic::Status;

use crate::clients::etcd::Client;
use crate::error::{Error, Result};
use crate::runtime;

/// Pause between two rounds over the endpoints: from FIRST_PAUSE, doubling, up to MAX_PAUSE.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(400);
/// With several endpoints: how long one member may keep a call without answering before the
/// call is given to the next.
const STALL: Duration = Duration::from_secs(3);

/// How the failure of one attempt is to be treated.
enum Failure {
    /// The member could not be reached: try the next endpoint.
    Unreachable(Error),
    /// The member answered but could not serve the call now: another endpoint, or the same
    /// one a moment later, may.
    Retry(Error),
    /// The answer is final (a refusal of the request itself).
    Final(Error),
}

/// The tooz error for a failed call, and whether it is worth trying elsewhere. Every failure
/// of our client is a gRPC status: etcd's own refusals say "etcdserver: ..."; tonic reports a
/// member it cannot reach (or a stream that ended early) as Unavailable, Unknown or Cancelled
/// without that prefix; an answer that does not decode is Internal (final).
fn classify(what: &str, status: Status) -> Failure {
    use tonic::Code;
    let msg = format!("{what}: etcd said {}: {}", code_name(status.code()), status.message());
    let from_server = status.message().starts_with("etcdserver");
    let refused_credentials = ["authentication failed", "user name is empty", "invalid auth token", "permission denied"]
        .iter()
        .any(|m| status.message().contains(m));
    if refused_credentials {
        return Failure::Final(Error::Connection(msg));
    }
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled if !from_server => Failure::Unreachable(Error::Connection(msg)),
        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::Unknown | Code::ResourceExhausted => {
            Failure::Retry(Error::Connection(msg))
        }
        Code::DeadlineExceeded => Failure::Retry(Error::Timeout(msg)),
        Code::Unauthenticated | Code::PermissionDenied => Failure::Final(Error::Connection(msg)),
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => Failure::Final(Error::InvalidArgument(msg)),
        _ => Failure::Final(Error::Tooz(msg)),
    }
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// Whether etcd refused the lease id (expired or revoked).
pub(crate) fn lease_gone(s: &Status) -> bool {
    s.code() == tonic::Code::NotFound || s.message().contains("lease not found")
}

/// Whether a call failed because the lease it used lapsed (see [`lease_gone`]).
pub(crate) fn lapsed(e: &Error) -> bool {
    matches!(e, Error::Tooz(m) if m.contains("lease not found"))
}

struct Channels {
    generation: u64,
    clients: Vec<Option<Client>>,
    preferred: usize,
}

pub(crate) struct Link {
    /// `http://host:port` or `https://host:port`, in the order given.
    endpoints: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    user: Option<(String, String)>,
    budget: Duration,
    channels: Mutex<Channels>,
    health: crate::log::Health,
}

impl Link {
    pub(crate) fn new(
        endpoints: Vec<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        user: Option<(String, String)>,
        budget: Duration,
        label: String,
    ) -> Link {
        let n = endpoints.len();
        Link {
            health: crate::log::Health::new("tooz.drivers.etcd3gw", format!("{label} on etcd3 at {}", endpoints.join(","))),
            endpoints,
            tls,
            user,
            budget,
            channels: Mutex::new(Channels { generation: runtime::generation(), clients: vec![None; n], preferred: 0 }),
        }
    }

    /// The endpoints, for messages (never credentials: they are not part of them).
    pub(crate) fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    fn channels(&self) -> std::sync::MutexGuard<'_, Channels> {
        let mut ch = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if ch.generation != runtime::generation() {
            // Forked: the inherited channels' tasks stayed in the parent's runtime.
            for c in ch.clients.iter_mut() {
                if let Some(inherited) = c.take() {
                    std::mem::forget(inherited);
                }
            }
            ch.generation = runtime::generation();
        }
        ch
    }

    /// Drops every channel (they reconnect lazily when used again).
    pub(crate) fn reset(&self) {
        let mut ch = self.channels();
        for c in ch.clients.iter_mut() {
            *c = None;
        }
    }

    fn channel(&self, index: usize) -> Result<tonic::transport::Channel> {
        let uri = &self.endpoints[index];
        let connect_timeout = self.budget.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
            .map_err(|e| Error::InvalidArgument(format!("bad etcd endpoint {uri}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // Notice a dead member on an idle connection (watches, keep-alives) in seconds.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        Ok(match &self.tls {
            None => endpoint.connect_lazy(),
            Some(config) => endpoint.connect_with_connector_lazy(tls_connector(config.clone())),
        })
    }

    /// The client of endpoint `index`, made (lazily connected) if needed.
    async fn client(&self, index: usize, deadline: Instant) -> Result<Client> {
        if let Some(c) = self.channels().clients[index].clone() {
            return Ok(c);
        }
        let channel = self.channel(index)?;
        // Authenticates (one round trip) when there is a user; otherwise no I/O. Calls carry
        // `hasleader`: a member cut off from its leader refuses at once (Retry, elsewhere).
        let made = timeout_at(deadline, Client::connect(channel, true, self.user.clone()))
            .await
            .map_err(|_| Error::Connection(format!("timed out connecting to etcd at {}", self.endpoints[index])))?;
        let client = match made {
            Ok(c) => c,
            Err(e) => {
                return Err(match classify("connect", e) {
                    Failure::Unreachable(e) | Failure::Retry(e) | Failure::Final(e) => e,
                })
            }
        };
        self.channels().clients[index] = Some(client.clone());
        Ok(client)
    }

    fn forget(&self, index: usize) {
        self.channels().clients[index] = None;
    }

    /// Runs `op` on a client, failing over between endpoints within the time budget.
    pub(crate) async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        self.run_until(what, Instant::now() + self.budget, op).await
    }

    /// As [`Link::run`], with an explicit deadline.
    pub(crate) async fn run_until<T, F, Fut>(&self, what: &str, deadline: Instant, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        let n = self.endpoints.len();
        let mut pause = FIRST_PAUSE;
        let mut last: Option<Error> = None;
        loop {
            let mut reached = false;
            let first = self.channels().preferred;
            for step in 0..n {
                let index = (first + step) % n;
                let now = Instant::now();
                if now >= deadline {
                    return Err(self.out_of_time(what, last));
                }
                // With several endpoints, a member that stalls may not eat the whole budget:
                // after a few seconds without an answer the next one is asked.
                let left = deadline - now;
                let slice = if n > 1 { (left / 2).min(STALL).max(Duration::from_millis(500)).min(left) } else { left };
                let attempt_deadline = now + slice;
                let client = match self.client(index, attempt_deadline).await {
                    Ok(c) => c,
                    Err(e) => {
                        if matches!(e, Error::Connection(_) | Error::Timeout(_)) {
                            last = Some(e);
                            self.forget(index);
                            continue;
                        }
                        return Err(e);
                    }
                };
                match timeout_at(attempt_deadline, op(client)).await {
                    Ok(Ok(v)) => {
                        if step != 0 {
                            self.channels().preferred = index;
                            crate::log::emit(
                                crate::log::Level::Warning,
                                "tooz.drivers.etcd3gw",
                                format!("failed over to the etcd member at {}", self.endpoints[index]),
                            );
                        }
                        self.health.up();
                        return Ok(v);
                    }
                    Ok(Err(e)) => match classify(what, e) {
                        Failure::Final(e) => return Err(e),
                        Failure::Unreachable(e) => {
                            self.forget(index);
                            last = Some(e);
                        }
                        Failure::Retry(e) => {
                            reached = true;
                            last = Some(e);
                        }
                    },
                    Err(_) => {
                        reached = true;
                        last = Some(Error::Timeout(format!(
                            "{what}: no answer from etcd at {} in time",
                            self.endpoints[index]
                        )));
                        // A member that stalls is given up for the next call too.
                        self.forget(index);
                    }
                }
                // Next time start with the next endpoint.
                self.channels().preferred = (index + 1) % n;
            }
            let now = Instant::now();
            if !reached || now + pause >= deadline {
                return Err(self.out_of_time(what, last));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    fn out_of_time(&self, what: &str, last: Option<Error>) -> Error {
        let e = match last {
            Some(e) => e,
            None => Error::Timeout(format!("{what}: etcd ({}) did not answer within {:.1}s", self.describe(), self.budget.as_secs_f64())),
        };
        self.health.lost(&e);
        e
    }
}

/// A tonic connector that opens TCP then TLS with the shared rustls set-up (ALPN h2).
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
       + Clone
       + 'static {
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(2379);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad host name {host}: {e}")))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::etcd::messages::RangeRequest;

    fn status(code: tonic::Code, msg: &str) -> Status {
        Status::new(code, msg)
    }

    #[test]
    fn classifies_failures() {
        // A connection tonic could not make: try the next endpoint at once.
        assert!(matches!(classify("x", status(tonic::Code::Unavailable, "tcp connect error")), Failure::Unreachable(Error::Connection(_))));
        // A member without a leader: retry (elsewhere, or later).
        assert!(matches!(classify("x", status(tonic::Code::Unavailable, "etcdserver: no leader")), Failure::Retry(Error::Connection(_))));
        assert!(matches!(classify("x", status(tonic::Code::DeadlineExceeded, "etcdserver: request timed out")), Failure::Retry(Error::Timeout(_))));
        // Refused credentials are final and a connection error, whatever the code.
        assert!(matches!(
            classify("x", status(tonic::Code::InvalidArgument, "etcdserver: authentication failed, invalid user ID or password")),
            Failure::Final(Error::Connection(_))
        ));
        assert!(matches!(classify("x", status(tonic::Code::NotFound, "etcdserver: requested lease not found")), Failure::Final(Error::Tooz(_))));
        assert!(lease_gone(&status(tonic::Code::NotFound, "etcdserver: requested lease not found")));
        assert!(!lease_gone(&status(tonic::Code::Unavailable, "etcdserver: no leader")));
        // An answer that did not decode (tonic's codec says Internal): final, not retried.
        assert!(matches!(classify("x", status(tonic::Code::Internal, "failed to decode Protobuf message")), Failure::Final(Error::Tooz(_))));
        // What our client says when it cannot get a channel ready: the next endpoint.
        assert!(matches!(classify("x", status(tonic::Code::Unavailable, "cannot reach etcd: transport error")), Failure::Unreachable(_)));
    }

    #[test]
    fn no_reachable_endpoint_fails_at_once() {
        crate::runtime::block_on(async {
            // Ports nothing listens on (bound then released).
            let ports: Vec<u16> = (0..2)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
                .collect();
            let link = Link::new(ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect(), None, None, Duration::from_secs(20), "test".into());
            let began = std::time::Instant::now();
            let got = link.run("probe", |c| async move { c.range(RangeRequest::key("k")).await }).await;
            assert!(matches!(got, Err(Error::Connection(_))), "{got:?}");
            assert!(began.elapsed() < Duration::from_secs(10), "did not wait out the budget");
        });
    }
}
