//! The task that owns a session's connection: connecting to a server of the list (TCP, TLS,
//! the session handshake, authentication), then writing requests, matching replies to them
//! by xid, pinging, delivering watch events, and reconnecting to the same session when the
//! connection drops.

use super::*;
use crate::lock::lease::Lease;

fn io_error(e: std::io::Error) -> String {
    e.to_string()
}

async fn write_frame(stream: &mut Stream, body: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as i32).to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut Stream, limit: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.map_err(io_error)?;
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > limit {
        return Err(format!("bad frame length {n}"));
    }
    let mut body = vec![0u8; n as usize];
    stream.read_exact(&mut body).await.map_err(io_error)?;
    Ok(body)
}

/// Takes one complete frame off the front of `buf`, if there is one.
fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if n < 0 || n as usize > MAX_FRAME {
        return Err(format!("bad frame length {n}"));
    }
    let n = n as usize;
    if buf.len() < 4 + n {
        return Ok(None);
    }
    let frame = buf[4..4 + n].to_vec();
    buf.drain(..4 + n);
    Ok(Some(frame))
}

enum Attempt {
    /// Try another server (or the same one later).
    Retry(String),
    /// No point trying again.
    Fatal(ZkError),
}

/// One connection attempt to one server: TCP, TLS, the session handshake, authentication.
async fn attempt(config: &Config, host: &Host, session: &mut Session, deadline: Instant) -> Result<Stream, Attempt> {
    let unreachable = |what: &str, why: String| Attempt::Retry(format!("{}:{}: {what}: {why}", host.name, host.port));
    let tcp = match timeout_at(deadline, TcpStream::connect((host.name.as_str(), host.port))).await {
        Err(_) => return Err(unreachable("connect", "timed out".into())),
        Ok(Err(e)) => return Err(unreachable("connect", e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let mut stream: Stream = match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(host.name.clone())
                .map_err(|_| Attempt::Fatal(ZkError::Unreachable(format!("{} is not a valid TLS server name", host.name))))?;
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            match timeout_at(deadline, connector.connect(name, tcp)).await {
                Err(_) => return Err(unreachable("TLS handshake", "timed out".into())),
                Ok(Err(e)) => return Err(unreachable("TLS handshake", e.to_string())),
                Ok(Ok(s)) => Box::new(s),
            }
        }
    };
    let request = ConnectRequest {
        last_zxid_seen: session.last_zxid,
        timeout_ms: session.timeout.as_millis().min(i32::MAX as u128) as i32,
        session_id: session.id,
        password: &session.password,
    };
    let sent = Instant::now();
    let handshake = async {
        write_frame(&mut stream, &request.encode()).await.map_err(io_error)?;
        read_frame(&mut stream, 4096).await
    };
    let frame = match timeout_at(deadline, handshake).await {
        Err(_) => return Err(unreachable("session handshake", "timed out".into())),
        Ok(Err(e)) => return Err(unreachable("session handshake", e)),
        Ok(Ok(f)) => f,
    };
    let response = ConnectResponse::decode(&frame).map_err(|e| unreachable("session handshake", e.0.into()))?;
    if response.timeout_ms <= 0 {
        return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::Expired)));
    }
    session.id = response.session_id;
    session.password = response.password;
    session.heard_sent = sent;
    session.timeout = Duration::from_millis(response.timeout_ms as u64);
    // Authenticate before anything else is sent; the server answers each packet in order
    // (and closes the connection after a refusal).
    for (scheme, credentials) in &config.auth {
        let sent = write_frame(&mut stream, &proto::request(xid::AUTH, op::AUTH, &proto::auth(scheme, credentials))).await;
        sent.map_err(|e| unreachable("authentication", e.to_string()))?;
    }
    for _ in &config.auth {
        let frame = match timeout_at(deadline, read_frame(&mut stream, 4096)).await {
            Err(_) => return Err(unreachable("authentication", "timed out".into())),
            Ok(Err(_)) => return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::AuthFailed))),
            Ok(Ok(f)) => f,
        };
        let header = ReplyHeader::decode(&mut Reader::new(&frame)).map_err(|e| unreachable("authentication", e.0.into()))?;
        if header.err != 0 {
            return Err(Attempt::Fatal(ZkError::SessionEnded(Ended::AuthFailed)));
        }
    }
    Ok(stream)
}

/// The order in which to try the hosts on one pass: as given, or shuffled.
fn host_order(config: &Config) -> Vec<usize> {
    let mut order: Vec<usize> = (0..config.hosts.len()).collect();
    if config.randomize_hosts {
        let mut seed = uuid::Uuid::new_v4().as_u128();
        for i in (1..order.len()).rev() {
            order.swap(i, (seed % (i as u128 + 1)) as usize);
            seed /= i as u128 + 1;
        }
    }
    order
}

/// Connects to one of the servers, passing over them until `deadline`.
pub(super) async fn establish(config: &Config, session: &mut Session, deadline: Instant) -> ZkResult<Stream> {
    if config.hosts.is_empty() {
        return Err(ZkError::Unreachable("no hosts given".into()));
    }
    let mut last = String::from("no attempt made");
    let mut pause = Duration::from_millis(50);
    loop {
        for i in host_order(config) {
            if Instant::now() >= deadline {
                return Err(ZkError::Unreachable(last));
            }
            match attempt(config, &config.hosts[i], session, deadline).await {
                Ok(stream) => return Ok(stream),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            }
        }
        let wake = (Instant::now() + pause).min(deadline);
        sleep_until(wake).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

enum Outcome {
    /// The connection dropped; the session may still be alive.
    Lost,
    Ended(Ended),
}

struct Pending {
    op: i32,
    reply: Reply,
    watch: Option<Watcher>,
    /// When the request was written (its answer proves the server had it by then).
    sent: Instant,
}

/// The session task.
pub(super) async fn run(
    config: Arc<Config>,
    mut session: Session,
    first: Stream,
    mut commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<State>,
) {
    let mut epoch = 1u64;
    let mut stream = Some(first);
    let mut last_heard = Instant::now();
    let mut closer: Option<oneshot::Sender<()>> = None;
    let mut watches = Watches::default();
    let ended = loop {
        let conn = match stream.take() {
            Some(s) => s,
            None => {
                let _ = state.send(State::Connecting);
                // The server keeps the session its timeout after our last request it answered
                // arrived: the client's clock starts when that request was sent, and stops
                // short of the timeout by the margin of every lease (`lock/lease.rs`).
                let give_up = Lease::exact(session.timeout).deadline(session.heard_sent);
                let reconnect = establish(&config, &mut session, give_up);
                tokio::pin!(reconnect);
                let got = loop {
                    tokio::select! {
                        r = &mut reconnect => break Some(r),
                        cmd = commands.recv() => match cmd {
                            None => break None,
                            Some(Command::Close(done)) => { closer = Some(done); break None }
                            Some(Command::Request { reply, .. }) => { let _ = reply.send(Err(ZkError::ConnectionLoss)); }
                        },
                    }
                };
                match got {
                    None => break Ended::Closed,
                    Some(Ok(s)) => {
                        epoch += 1;
                        let _ = state.send(State::Connected(epoch));
                        log::emit(log::Level::Info, config.log_as.0.clone(), format!("{}: reconnected, session kept", config.log_as.1));
                        s
                    }
                    Some(Err(ZkError::SessionEnded(e))) => break e,
                    // Out of time: the server has expired the session by now.
                    Some(Err(_)) => break Ended::Expired,
                }
            }
        };
        match serve(conn, epoch, &mut session, &mut watches, &mut commands, &mut last_heard, &mut closer).await {
            Outcome::Lost => {
                log::emit(
                    log::Level::Warning,
                    config.log_as.0.clone(),
                    format!("{}: connection lost; reconnecting within the {:?} session timeout", config.log_as.1, session.timeout),
                );
                continue;
            }
            Outcome::Ended(e) => break e,
        }
    };
    if ended == Ended::Expired {
        log::emit(
            log::Level::Warning,
            config.log_as.0.clone(),
            format!("{}: session expired; its ephemeral nodes (members, locks, leaders) are gone", config.log_as.1),
        );
    }
    // The session is gone, and its watches with it (their receivers see the sender dropped).
    drop(watches);
    let _ = state.send(State::Ended(ended));
    commands.close();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Request { reply, .. } => {
                let _ = reply.send(Err(ZkError::SessionEnded(ended)));
            }
            Command::Close(done) => {
                let _ = done.send(());
            }
        }
    }
    if let Some(done) = closer {
        let _ = done.send(());
    }
}

/// Serves one connection until it drops or the session ends.
async fn serve(
    mut stream: Stream,
    epoch: u64,
    session: &mut Session,
    watches: &mut Watches,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    last_heard: &mut Instant,
    closer: &mut Option<oneshot::Sender<()>>,
) -> Outcome {
    let read_timeout = (session.timeout * 2 / 3).max(Duration::from_millis(100));
    let ping_every = read_timeout / 2;
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    // When the pings still unanswered on this connection were sent, oldest first.
    let mut pings: std::collections::VecDeque<Instant> = std::collections::VecDeque::new();
    let mut next_xid: i32 = 1;
    // Set the session's watches again before anything else is sent on this connection.
    if let Some(payload) = watches.rearm(session.last_zxid) {
        if write_frame(&mut stream, &proto::request(xid::SET_WATCHES, op::SET_WATCHES, &payload)).await.is_err() {
            return Outcome::Lost;
        }
    }
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_sent = Instant::now();
    *last_heard = Instant::now();
    let mut closing: Option<Instant> = None;

    let outcome = 'conn: loop {
        // Handle every complete frame received so far.
        loop {
            let frame = match take_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn Outcome::Lost,
            };
            let mut r = Reader::new(&frame);
            let Ok(header) = ReplyHeader::decode(&mut r) else { break 'conn Outcome::Lost };
            if header.zxid > session.last_zxid {
                session.last_zxid = header.zxid;
            }
            match header.xid {
                xid::PING => {
                    // Answered in order: the oldest ping still out.
                    if let Some(sent) = pings.pop_front() {
                        session.heard_sent = session.heard_sent.max(sent);
                    }
                }
                xid::AUTH => {
                    if header.err != 0 {
                        break 'conn Outcome::Ended(Ended::AuthFailed);
                    }
                }
                xid::NOTIFICATION => {
                    let Ok(event) = WatcherEvent::decode(&mut r) else { break 'conn Outcome::Lost };
                    if event.kind != -1 {
                        watches.fire(&event.path, Some(event.kind));
                    }
                }
                // The watches could not be set again: wake their waiters to look again.
                xid::SET_WATCHES if header.err != 0 => {
                    for p in watches.paths() {
                        watches.fire(&p, None);
                    }
                }
                xid::SET_WATCHES => {}
                n => {
                    let Some(p) = pending.remove(&n) else { continue };
                    session.heard_sent = session.heard_sent.max(p.sent);
                    if p.op == op::CLOSE_SESSION {
                        break 'conn Outcome::Ended(Ended::Closed);
                    }
                    if header.err == code::SESSION_EXPIRED || header.err == code::SESSION_MOVED {
                        let _ = p.reply.send(Err(ZkError::SessionEnded(Ended::Expired)));
                        break 'conn Outcome::Ended(Ended::Expired);
                    }
                    if let Some(w) = p.watch {
                        let slot = match (w.on_children, header.err) {
                            (true, 0) => Some(Slot::Child),
                            (false, 0) => Some(Slot::Data),
                            (false, code::NO_NODE) => Some(Slot::Exist),
                            _ => None,
                        };
                        if let Some(slot) = slot {
                            watches.add(w.path, slot, w.fire);
                        }
                    }
                    let rest = frame[frame.len() - r.remaining()..].to_vec();
                    let _ = p.reply.send(if header.err == 0 { Ok(rest) } else { Err(ZkError::Server(header.err)) });
                }
            }
        }

        let ping_at = last_sent + ping_every;
        let silent_at = *last_heard + read_timeout;
        let close_at = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break 'conn if closing.is_some() { Outcome::Ended(Ended::Closed) } else { Outcome::Lost },
                Ok(_) => *last_heard = Instant::now(),
            },
            cmd = commands.recv(), if closing.is_none() => {
                let (op_code, payload, watch, reply) = match cmd {
                    None => (op::CLOSE_SESSION, Vec::new(), None, None),
                    Some(Command::Close(done)) => {
                        *closer = Some(done);
                        (op::CLOSE_SESSION, Vec::new(), None, None)
                    }
                    Some(Command::Request { epoch: e, reply, .. }) if e != epoch => {
                        let _ = reply.send(Err(ZkError::ConnectionLoss));
                        continue;
                    }
                    Some(Command::Request { op, payload, watch, reply, .. }) => (op, payload, watch, Some(reply)),
                };
                let x = next_xid;
                next_xid = if next_xid >= i32::MAX - 1 { 1 } else { next_xid + 1 };
                if write_frame(&mut stream, &proto::request(x, op_code, &payload)).await.is_err() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ZkError::ConnectionLoss));
                    }
                    break 'conn if op_code == op::CLOSE_SESSION { Outcome::Ended(Ended::Closed) } else { Outcome::Lost };
                }
                last_sent = Instant::now();
                if op_code == op::CLOSE_SESSION {
                    closing = Some(Instant::now() + session.timeout.min(Duration::from_secs(3)));
                    let (reply, _) = oneshot::channel();
                    pending.insert(x, Pending { op: op_code, reply, watch: None, sent: last_sent });
                } else if let Some(reply) = reply {
                    pending.insert(x, Pending { op: op_code, reply, watch, sent: last_sent });
                }
            },
            _ = sleep_until(ping_at) => {
                let sent = Instant::now();
                if write_frame(&mut stream, &proto::request(xid::PING, op::PING, &[])).await.is_err() {
                    break 'conn Outcome::Lost;
                }
                pings.push_back(sent);
                last_sent = Instant::now();
            },
            _ = sleep_until(silent_at) => break 'conn Outcome::Lost,
            _ = sleep_until(close_at), if closing.is_some() => break 'conn Outcome::Ended(Ended::Closed),
        }
    };
    // Whatever was in flight on this connection has an unknown outcome. Watches stay with the
    // session (set again on its next connection).
    for (_, p) in pending.drain() {
        let err = match outcome {
            Outcome::Lost => ZkError::ConnectionLoss,
            Outcome::Ended(e) => ZkError::SessionEnded(e),
        };
        let _ = p.reply.send(Err(err));
    }
    let _ = stream.shutdown().await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_split_and_bounded() {
        let mut buf = vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0];
        assert_eq!(take_frame(&mut buf).unwrap(), Some(b"ab".to_vec()));
        assert_eq!(take_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[1, b'c']);
        assert_eq!(take_frame(&mut buf).unwrap(), Some(b"c".to_vec()));
        assert!(buf.is_empty());
        let mut bad = vec![0xff, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut bad).is_err());
        let mut huge = vec![0x7f, 0xff, 0xff, 0xff];
        assert!(take_frame(&mut huge).is_err());
    }

    fn config(n: usize, randomize_hosts: bool) -> Config {
        Config {
            hosts: (0..n).map(|i| Host { name: format!("h{i}"), port: 2181 }).collect(),
            randomize_hosts,
            log_as: ("tooz.test".into(), "test".into()),
            chroot: String::new(),
            session_timeout: Duration::from_secs(1),
            auth: Vec::new(),
            tls: None,
        }
    }

    #[test]
    fn hosts_are_tried_in_the_given_order_on_every_pass_unless_randomized() {
        let fixed = config(5, false);
        for _ in 0..20 {
            assert_eq!(host_order(&fixed), vec![0, 1, 2, 3, 4]);
        }
        let random = config(5, true);
        let orders: Vec<Vec<usize>> = (0..50).map(|_| host_order(&random)).collect();
        for o in &orders {
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4], "a permutation");
        }
        assert!(orders.iter().any(|o| o != &orders[0]), "fresh order per pass");
    }
}
