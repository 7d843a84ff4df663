//! The calls: gRPC over one tonic channel (made and owned by the caller), with etcd's
//! metadata on each: `hasleader: true` when asked (a member without a leader then refuses at
//! once instead of waiting), and with a user, the `token` etcd's `Authenticate` gave. A call
//! etcd refuses because the token is no longer valid (it expired, or the member restarted)
//! authenticates again, once for all the calls that hit it together, and is sent once more.
//!
//! Every error is a `tonic::Status`: etcd's own (their messages start with "etcdserver:"),
//! tonic's when the member cannot be reached, `Internal` for an answer that does not decode.

use std::future::Future;
use std::sync::{Arc, RwLock};

use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::client::Grpc;
use tonic::codec::Streaming;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

use super::messages::*;

const RANGE: &str = "/etcdserverpb.KV/Range";
const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
const TXN: &str = "/etcdserverpb.KV/Txn";
const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
const WATCH: &str = "/etcdserverpb.Watch/Watch";
const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";

/// What etcd says (with `Unauthenticated`) of a token it no longer accepts. Services etcd
/// serves through its in-process client lose the code and answer `Unknown` with this text.
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";

/// A user's credentials and the token they were last exchanged for.
struct Auth {
    user: String,
    password: String,
    token: RwLock<Option<AsciiMetadataValue>>,
    /// Held while authenticating, so that calls refused together authenticate once.
    refreshing: tokio::sync::Mutex<()>,
}

impl Auth {
    fn token(&self) -> Option<AsciiMetadataValue> {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A client of one etcd member (cheap to clone: clones share the channel and the token).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    require_leader: bool,
    auth: Option<Arc<Auth>>,
}

/// An open watch stream: etcd's answers to its create request, then the events.
pub struct Watch {
    /// Kept open: closing the request side would end the watch.
    _requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Watch {
    /// The next response; `None` when etcd ended the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Status> {
        self.responses.message().await
    }
}

fn invalid_token(status: &Status) -> bool {
    match status.code() {
        Code::Unauthenticated => true,
        Code::Unknown => status.message() == INVALID_TOKEN,
        _ => false,
    }
}

impl Client {
    /// A client on `channel`. With credentials it authenticates first (one round trip);
    /// without, it does no I/O.
    pub async fn connect(channel: Channel, require_leader: bool, credentials: Option<(String, String)>) -> Result<Client, Status> {
        let auth = credentials.map(|(user, password)| {
            Arc::new(Auth { user, password, token: RwLock::new(None), refreshing: tokio::sync::Mutex::new(()) })
        });
        let client = Client { channel, require_leader, auth };
        if let Some(auth) = &client.auth {
            client.authenticate(auth).await?;
        }
        Ok(client)
    }

    async fn authenticate(&self, auth: &Auth) -> Result<(), Status> {
        let request = AuthenticateRequest { name: auth.user.clone(), password: auth.password.clone() };
        let answer: AuthenticateResponse = self.unary_once(AUTHENTICATE, request, None).await?;
        let token = AsciiMetadataValue::try_from(answer.token.as_str())
            .map_err(|_| Status::internal("etcd gave an authentication token that cannot be sent as metadata"))?;
        *auth.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    /// Authenticates again, unless another call did since `refused` was sent.
    async fn reauthenticate(&self, auth: &Auth, refused: Option<AsciiMetadataValue>) -> Result<(), Status> {
        let _one = auth.refreshing.lock().await;
        if auth.token() != refused {
            return Ok(());
        }
        self.authenticate(auth).await
    }

    /// Runs `call` with the current token; when etcd refuses the token, authenticates again
    /// and runs it once more.
    async fn with_token<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(Option<AsciiMetadataValue>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some(auth) = &self.auth else {
            return call(None).await;
        };
        let sent = auth.token();
        match call(sent.clone()).await {
            Err(status) if invalid_token(&status) => {
                self.reauthenticate(auth, sent).await?;
                call(auth.token()).await
            }
            other => other,
        }
    }

    fn request<T>(&self, message: T, token: Option<AsciiMetadataValue>) -> Request<T> {
        let mut request = Request::new(message);
        if self.require_leader {
            request.metadata_mut().insert("hasleader", AsciiMetadataValue::from_static("true"));
        }
        if let Some(token) = token {
            request.metadata_mut().insert("token", token);
        }
        request
    }

    async fn grpc(&self) -> Result<Grpc<Channel>, Status> {
        let mut grpc = Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| Status::unavailable(format!("cannot reach etcd: {}", error_chain(&e))))?;
        Ok(grpc)
    }

    async fn unary_once<Q, A>(&self, path: &'static str, message: Q, token: Option<AsciiMetadataValue>) -> Result<A, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc().await?;
        let codec = ProstCodec::<Q, A>::default();
        Ok(grpc.unary(self.request(message, token), PathAndQuery::from_static(path), codec).await?.into_inner())
    }

    async fn unary<Q, A>(&self, path: &'static str, message: Q) -> Result<A, Status>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.with_token(|token| self.unary_once(path, message.clone(), token)).await
    }

    /// Opens a bidirectional stream whose first request is `first`; the sender sends more,
    /// and dropping it closes the request side.
    async fn open<Q, A>(&self, path: &'static str, first: Q) -> Result<(mpsc::Sender<Q>, Streaming<A>), Status>
    where
        Q: prost::Message + Clone + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.with_token(|token| {
            let first = first.clone();
            async move {
                let (sender, receiver) = mpsc::channel(4);
                // Cannot fail: the receiver is right here.
                let _ = sender.try_send(first);
                let mut grpc = self.grpc().await?;
                let codec = ProstCodec::<Q, A>::default();
                let request = self.request(ReceiverStream::new(receiver), token);
                let responses = grpc.streaming(request, PathAndQuery::from_static(path), codec).await?.into_inner();
                Ok((sender, responses))
            }
        })
        .await
    }

    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, Status> {
        self.unary(RANGE, request).await
    }

    pub async fn delete_range(&self, request: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        self.unary(DELETE_RANGE, request).await
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        self.unary(TXN, request).await
    }

    /// A new lease of `ttl` seconds (its id chosen by etcd).
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, Status> {
        self.unary(LEASE_GRANT, LeaseGrantRequest { ttl, id: 0 }).await
    }

    /// Revokes a lease (its keys are deleted); etcd answers `NotFound` for an unknown lease.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Status> {
        self.unary(LEASE_REVOKE, LeaseRevokeRequest { id }).await
    }

    /// Refreshes a lease once, over a keep-alive stream opened for it and closed after the
    /// answer: the TTL it was renewed to, 0 when etcd does not know the lease (expired or
    /// revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, Status> {
        let (_sender, mut answers) = self.open::<_, LeaseKeepAliveResponse>(LEASE_KEEP_ALIVE, LeaseKeepAliveRequest { id }).await?;
        match answers.message().await? {
            Some(answer) => Ok(answer.ttl.max(0)),
            None => Err(Status::unavailable("the lease keep-alive stream ended without an answer")),
        }
    }

    /// Opens a watch stream with one watch.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<Watch, Status> {
        let first = WatchRequest { action: Some(WatchAction::Create(create)) };
        let (requests, responses) = self.open(WATCH, first).await?;
        Ok(Watch { _requests: requests, responses })
    }
}

/// An error with its causes ("transport error: connection refused ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
