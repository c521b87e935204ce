//! Who this host is: instance id, region, account and AMI, asked of the IMDS itself with
//! IMDSv2 only (a token PUT, then one GET of the instance identity document with it; never a
//! token-less request, which would make the daemon one of the callers it reports). Asked in the
//! background, with retries, because at boot the daemon starts before the network is up; off
//! EC2 nobody answers and the daemon carries on without, saying so once.
//!
//! These requests go through the daemon's own capture like any other: the pipeline marks them
//! `own` (sender pid = the daemon's), so they never count against the verdict.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use crate::causes::Causes;

/// The IMDS's IPv4 address. The IPv6 one exists only on Nitro instances with it enabled.
pub const IMDS_ENDPOINT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80));
/// Each attempt: connect, PUT, GET. IMDS answers in about a millisecond when it is there.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between attempts: doubles from the first to the last, then stays.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// After this many failed attempts (about 10 minutes with the backoff above) the daemon stops
/// asking: a boot's network is up long before, so nobody is there to answer.
const MAX_ATTEMPTS: u32 = 16;
/// An identity document is about 500 bytes; anything much larger is not one.
const MAX_RESPONSE: usize = 16 * 1024;
/// The token is used once, at once.
const TOKEN_TTL_SECONDS: u32 = 60;

/// The host's identity, from the instance identity document (camelCase there; snake_case in
/// the ledger and the report, which read both).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Identity {
    #[serde(alias = "instanceId")]
    pub instance_id: String,
    pub region: String,
    #[serde(alias = "accountId")]
    pub account_id: String,
    #[serde(alias = "imageId")]
    pub image_id: String,
}

/// The identity as it becomes known: `None` until the IMDS answered (and for ever off EC2).
pub type IdentityWatch = watch::Receiver<Option<Arc<Identity>>>;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("connecting to the IMDS at {0}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("talking to the IMDS")]
    Io(#[source] io::Error),
    #[error("no answer from the IMDS within {0:?}")]
    Timeout(Duration),
    #[error("the IMDS answered {0} to {1}")]
    Status(u16, &'static str),
    #[error("the IMDS's answer to {0} is not HTTP/1.x with a Content-Length body")]
    Malformed(&'static str),
    #[error("the instance identity document is not what it should be")]
    Document(#[source] serde_json::Error),
}

impl IdentityError {
    /// Nobody answered at all: what a host off EC2 (or before its network is up) gets.
    fn is_silence(&self) -> bool {
        matches!(self, Self::Connect(..) | Self::Timeout(_))
    }
}

/// Starts asking in the background; the watch says when the answer is in, and closes when the
/// daemon stops asking without one.
pub fn learn(endpoint: SocketAddr) -> IdentityWatch {
    let (tell, watch) = watch::channel(None);
    tokio::spawn(async move {
        if let Some(identity) = ask_until_answered(endpoint).await {
            tracing::info!(
                instance_id = %identity.instance_id,
                region = %identity.region,
                account_id = %identity.account_id,
                image_id = %identity.image_id,
                "this host's identity, from the IMDS (IMDSv2)"
            );
            let _ = tell.send(Some(Arc::new(identity)));
        }
    });
    watch
}

/// A watch that never learns anything (`--no-identity`): closed at once, as after giving up.
pub fn unknown() -> IdentityWatch {
    watch::channel(None).1
}

/// Waits for the identity; `None` once the daemon stopped asking without an answer.
#[cfg(feature = "cloudwatch-logs")]
pub async fn wait(watch: &mut IdentityWatch) -> Option<Arc<Identity>> {
    watch
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|identity| identity.clone())
}

async fn ask_until_answered(endpoint: SocketAddr) -> Option<Identity> {
    let mut wait = FIRST_RETRY;
    let mut told = false;
    for attempt in 1..=MAX_ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, ask(endpoint)).await {
            Ok(Ok(identity)) => return Some(identity),
            Ok(Err(error)) => tell_once(&mut told, &error),
            Err(_) => tell_once(&mut told, &IdentityError::Timeout(ATTEMPT_TIMEOUT)),
        }
        if attempt < MAX_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
    tracing::warn!(
        attempts = MAX_ATTEMPTS,
        "gave up asking the IMDS who this host is: events, metrics and the report carry no instance identity"
    );
    None
}

fn tell_once(told: &mut bool, error: &IdentityError) {
    if std::mem::replace(told, true) {
        tracing::debug!(error = %Causes(error), "asking the IMDS who this host is failed again");
    } else if error.is_silence() {
        tracing::info!(
            error = %Causes(error),
            "no instance identity yet (not on EC2, or the network is not up): carrying on without, asking again in the background"
        );
    } else {
        tracing::warn!(
            error = %Causes(error),
            "the IMDS did not tell who this host is: carrying on without, asking again in the background"
        );
    }
}

/// One attempt: token PUT, then the identity document with the token.
async fn ask(endpoint: SocketAddr) -> Result<Identity, IdentityError> {
    let put = format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         X-aws-ec2-metadata-token-ttl-seconds: {TOKEN_TTL_SECONDS}\r\n\
         User-Agent: imds-probe/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let token = exchange(endpoint, put.as_bytes(), "the token PUT").await?;
    let token = std::str::from_utf8(&token)
        .map_err(|_| IdentityError::Malformed("the token PUT"))?
        .trim()
        .to_owned();
    let mut get = format!(
        "GET /latest/dynamic/instance-identity/document HTTP/1.1\r\nHost: 169.254.169.254\r\n\
         User-Agent: imds-probe/{}\r\nConnection: close\r\nX-aws-ec2-metadata-token: ",
        env!("CARGO_PKG_VERSION")
    );
    get.push_str(&token);
    get.push_str("\r\n\r\n");
    let document = exchange(endpoint, get.as_bytes(), "the identity document GET").await?;
    serde_json::from_slice(&document).map_err(IdentityError::Document)
}

/// Sends one request on a connection of its own and returns the 200 response's body.
async fn exchange(
    endpoint: SocketAddr,
    request: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, IdentityError> {
    let mut stream = TcpStream::connect(endpoint)
        .await
        .map_err(|e| IdentityError::Connect(endpoint, e))?;
    stream.write_all(request).await.map_err(IdentityError::Io)?;
    let mut response = Vec::with_capacity(1024);
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64);
    limited
        .read_to_end(&mut response)
        .await
        .map_err(IdentityError::Io)?;
    body_of(&response, what)
}

/// The body of a complete `200` response in `bytes`.
fn body_of(bytes: &[u8], what: &'static str) -> Result<Vec<u8>, IdentityError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head)) = response.parse(bytes) else {
        return Err(IdentityError::Malformed(what));
    };
    let status = response.code.ok_or(IdentityError::Malformed(what))?;
    if status != 200 {
        return Err(IdentityError::Status(status, what));
    }
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .ok_or(IdentityError::Malformed(what))?;
    bytes
        .get(head..head + length)
        .map(<[u8]>::to_vec)
        .ok_or(IdentityError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_identity_document() {
        let document = br#"{"accountId":"123456789012","architecture":"x86_64","availabilityZone":"us-east-1a","imageId":"ami-0abcdef1234567890","instanceId":"i-0123456789abcdef0","instanceType":"t3.micro","region":"us-east-1","version":"2017-09-30"}"#;
        let identity: Identity = serde_json::from_slice(document).unwrap();
        assert_eq!(
            identity,
            Identity {
                instance_id: "i-0123456789abcdef0".into(),
                region: "us-east-1".into(),
                account_id: "123456789012".into(),
                image_id: "ami-0abcdef1234567890".into(),
            }
        );
    }

    #[test]
    fn the_ledgers_form_reads_back() {
        let identity = Identity {
            instance_id: "i-0123456789abcdef0".into(),
            region: "eu-west-1".into(),
            account_id: "123456789012".into(),
            image_id: "ami-0abcdef1234567890".into(),
        };
        let json = serde_json::to_value(&identity).unwrap();
        assert_eq!(json["instance_id"], "i-0123456789abcdef0");
        assert_eq!(serde_json::from_value::<Identity>(json).unwrap(), identity);
    }

    #[test]
    fn takes_the_body_of_a_200_and_refuses_the_rest() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: EC2ws\r\n\r\nhello";
        assert_eq!(body_of(ok, "x").unwrap(), b"hello");
        let unauthorized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            body_of(unauthorized, "x"),
            Err(IdentityError::Status(401, "x"))
        ));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello";
        assert!(matches!(
            body_of(short, "x"),
            Err(IdentityError::Malformed(_))
        ));
        let no_length = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert!(matches!(
            body_of(no_length, "x"),
            Err(IdentityError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn silence_is_told_apart_from_a_refusal() {
        // A port on loopback that nobody listens on: connection refused, as off EC2.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = ask(addr).await.unwrap_err();
        assert!(error.is_silence(), "{error:?}");
        assert!(!IdentityError::Status(401, "x").is_silence());
    }
}
