//! A SASL/SCRAM-SHA-512 gateway for tests: a tansu process of the test's own behind a TCP
//! front that speaks Kafka's SASL handshake (SaslHandshake, SaslAuthenticate) and checks the
//! client's SCRAM proof (RFC 5802 / RFC 7677, as Kafka does) before it relays anything else.
//! tansu itself cannot get a first user while it authenticates, and librdkafka's mock cluster
//! has no SASL; this front is how the tests reach an authenticating broker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::own_tansu::OwnTansu;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const MECHANISM: &str = "SCRAM-SHA-512";
const ITERATIONS: u32 = 4096;

/// tansu behind a SCRAM-SHA-512 gateway with one user.
#[derive(Debug)]
pub struct ScramGateway {
    addr: SocketAddr,
    _tansu: OwnTansu,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct User {
    name: String,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl User {
    fn new(name: &str, password: &str) -> Self {
        let salt = b"weir-test-salt-0123456789".to_vec();
        let mut salted = [0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            name: name.to_owned(),
            salt,
            stored_key: Sha512::digest(&client_key).to_vec(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

impl ScramGateway {
    /// Starts tansu (installed by `scripts/broker.sh`) and the gateway, which accepts `user`
    /// with `password`.
    pub async fn start(user: &str, password: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tansu = tokio::task::block_in_place(|| OwnTansu::start(&addr.to_string()));
        let plain = tansu.addr();
        let user = Arc::new(User::new(user, password));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let user = Arc::clone(&user);
                tokio::spawn(async move {
                    if let Err(e) = serve(client, plain, &user).await {
                        tracing::debug!("sasl gateway connection: {e}");
                    }
                });
            }
        });
        Self {
            addr,
            _tansu: tansu,
            accept,
        }
    }

    /// The bootstrap address (the gateway's).
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ScramGateway {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type Io<T> = std::io::Result<T>;

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

async fn read_frame(s: &mut TcpStream) -> Io<Vec<u8>> {
    let len = s.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| invalid("negative frame size"))?;
    let mut frame = vec![0; len];
    s.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame(s: &mut TcpStream, frame: &[u8]) -> Io<()> {
    s.write_i32(frame.len() as i32).await?;
    s.write_all(frame).await
}

/// A reader of a request's fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Io<&'a [u8]> {
        if self.0.len() < n {
            return Err(invalid("short request"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> Io<i16> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().map_err(|_| invalid("i16"))?,
        ))
    }
    fn i32(&mut self) -> Io<i32> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| invalid("i32"))?,
        ))
    }
    fn string(&mut self) -> Io<&'a [u8]> {
        let n = self.i16()?;
        self.take(usize::try_from(n).unwrap_or(0))
    }
    fn bytes(&mut self) -> Io<&'a [u8]> {
        let n = self.i32()?;
        self.take(usize::try_from(n).unwrap_or(0))
    }
}

fn put_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            out.extend((s.len() as i16).to_be_bytes());
            out.extend(s.as_bytes());
        }
        None => out.extend((-1i16).to_be_bytes()),
    }
}

/// One client connection: the SASL exchange, then a plain relay to tansu.
async fn serve(mut client: TcpStream, upstream: SocketAddr, user: &User) -> Io<()> {
    let mut broker = TcpStream::connect(upstream).await?;
    let mut scram: Option<(String, String)> = None; // (client-first-bare, server-first)
    loop {
        let frame = read_frame(&mut client).await?;
        let mut f = Fields(&frame);
        let (api, version, correlation) = (f.i16()?, f.i16()?, f.i32()?);
        let _client_id = f.string()?;
        let mut reply = correlation.to_be_bytes().to_vec();
        match api {
            API_VERSIONS => {
                write_frame(&mut broker, &frame).await?;
                let answer = read_frame(&mut broker).await?;
                write_frame(&mut client, &answer).await?;
            }
            SASL_HANDSHAKE if version <= 1 => {
                let mechanism = f.string()?;
                let error = if mechanism == MECHANISM.as_bytes() {
                    0
                } else {
                    UNSUPPORTED_SASL_MECHANISM
                };
                reply.extend(error.to_be_bytes());
                reply.extend(1i32.to_be_bytes());
                put_string(&mut reply, Some(MECHANISM));
                write_frame(&mut client, &reply).await?;
            }
            SASL_AUTHENTICATE if version <= 1 => {
                let message = String::from_utf8_lossy(f.bytes()?).into_owned();
                let (error, text, answer, done) = match scram.take() {
                    None => match server_first(user, &message) {
                        Some((bare, first)) => {
                            scram = Some((bare, first.clone()));
                            (0, None, first, false)
                        }
                        None => (SASL_AUTHENTICATION_FAILED, Some("unknown user"), String::new(), false),
                    },
                    Some((bare, first)) => match server_final(user, &bare, &first, &message) {
                        Some(last) => (0, None, last, true),
                        None => (
                            SASL_AUTHENTICATION_FAILED,
                            Some("Authentication failed: invalid credentials with SASL mechanism SCRAM-SHA-512"),
                            String::new(),
                            false,
                        ),
                    },
                };
                reply.extend(error.to_be_bytes());
                put_string(&mut reply, text);
                reply.extend((answer.len() as i32).to_be_bytes());
                reply.extend(answer.as_bytes());
                if version >= 1 {
                    reply.extend(0i64.to_be_bytes()); // session lifetime: unlimited
                }
                write_frame(&mut client, &reply).await?;
                if error != 0 {
                    return Ok(()); // the client sees the error, then the connection closes
                }
                if done {
                    tokio::io::copy_bidirectional(&mut client, &mut broker).await?;
                    return Ok(());
                }
            }
            _ => return Err(invalid("request before authentication")),
        }
    }
}

/// The server-first message for a client-first message: (client-first-bare, server-first).
fn server_first(user: &User, client_first: &str) -> Option<(String, String)> {
    let bare = client_first.strip_prefix("n,,")?;
    let mut name = None;
    let mut nonce = None;
    for part in bare.split(',') {
        if let Some(v) = part.strip_prefix("n=") {
            name = Some(v);
        } else if let Some(v) = part.strip_prefix("r=") {
            nonce = Some(v);
        }
    }
    if name? != user.name {
        return None;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let ours = format!(
        "{:x}{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst) + 0x5eed
    );
    let first = format!(
        "r={}{ours},s={},i={ITERATIONS}",
        nonce?,
        B64.encode(&user.salt)
    );
    Some((bare.to_owned(), first))
}

/// Checks a client-final message's proof; the server-final message when it holds.
fn server_final(user: &User, bare: &str, first: &str, client_final: &str) -> Option<String> {
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let nonce = first.split(',').next()?.strip_prefix("r=")?;
    if !without_proof.split(',').any(|p| p == format!("r={nonce}")) {
        return None;
    }
    let auth_message = format!("{bare},{first},{without_proof}");
    let signature = hmac(&user.stored_key, auth_message.as_bytes());
    let proof = B64.decode(proof).ok()?;
    if proof.len() != signature.len() {
        return None;
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
    if Sha512::digest(&client_key).as_slice() != user.stored_key.as_slice() {
        return None;
    }
    let server_signature = hmac(&user.server_key, auth_message.as_bytes());
    Some(format!("v={}", B64.encode(server_signature)))
}
