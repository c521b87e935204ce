//! IMDS semantics on top of parsed requests: the token endpoint, the IMDSv1/IMDSv2 access
//! rules, and dispatch into the metadata tree.

use std::time::{Duration, Instant};

use tracing::error;

use crate::{
    http::{Body, Method, Request, Response, Status, parse_decimal},
    metadata,
    tokens::{Entropy, TokenStore},
};

const TOKEN_PATH: &str = "/latest/api/token";
/// IMDS's own bounds on the requested token lifetime: one second to six hours.
const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=21_600;

/// The instance's `HttpTokens` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Token optional: tokenless (IMDSv1) GETs are served.
    Optional,
    /// Token required: tokenless GETs get 401.
    Required,
}

pub struct Imds {
    mode: Mode,
    tokens: TokenStore,
    entropy: Entropy,
}

impl Imds {
    pub fn new(mode: Mode, tokens: TokenStore, entropy: Entropy) -> Self {
        Self {
            mode,
            tokens,
            entropy,
        }
    }

    pub fn handle(&self, req: &Request<'_>) -> Response {
        self.handle_at(req, Instant::now())
    }

    fn handle_at(&self, req: &Request<'_>, now: Instant) -> Response {
        let path = normalize(req.path);
        if path == TOKEN_PATH {
            return match req.method {
                Method::Put => self.issue_token(req, now),
                _ => Response::error(Status::MethodNotAllowed),
            };
        }
        if !matches!(req.method, Method::Get | Method::Head) {
            return Response::error(Status::MethodNotAllowed);
        }
        // Like IMDS, a bad token is refused even where no token is needed.
        let authorized = match req.token {
            Some(token) => self.tokens.is_valid(token, now),
            None => self.mode == Mode::Optional,
        };
        if !authorized {
            return Response::error(Status::Unauthorized);
        }
        metadata::lookup(path).map_or_else(|| Response::error(Status::NotFound), Response::text)
    }

    fn issue_token(&self, req: &Request<'_>, now: Instant) -> Response {
        // IMDS refuses tokens to proxied requests so a misconfigured proxy cannot hand one on.
        if req.forwarded {
            return Response::error(Status::Forbidden);
        }
        let Some(ttl) = req
            .ttl
            .and_then(parse_decimal)
            .filter(|t| TTL_RANGE.contains(t))
        else {
            return Response::error(Status::BadRequest);
        };
        let token = match self.entropy.token() {
            Ok(token) => token,
            Err(e) => {
                error!(error = %e, "reading /dev/urandom failed");
                return Response::error(Status::InternalError);
            }
        };
        self.tokens.insert(token, Duration::from_secs(ttl), now);
        Response {
            status: Status::Ok,
            content_type: "text/plain",
            body: Body::Token(token),
            ttl: u32::try_from(ttl).ok(),
        }
    }
}

/// Drops the query string and one trailing slash, which IMDS ignores.
fn normalize(path: &str) -> &str {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    path.strip_suffix('/').unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        http::{
            Conn,
            testing::{Parsed, split_responses},
        },
        tokens::DEFAULT_CAPACITY,
    };

    fn imds(mode: Mode) -> Imds {
        Imds::new(
            mode,
            TokenStore::new(DEFAULT_CAPACITY),
            Entropy::open().expect("/dev/urandom"),
        )
    }

    /// Feeds raw bytes through the real framing, as a connection would.
    fn exchange_at(imds: &Imds, raw: &str, now: Instant) -> Vec<Parsed> {
        let mut out = Vec::new();
        let progress =
            Conn::default().serve(raw.as_bytes(), &mut out, &mut |r| imds.handle_at(r, now));
        assert_eq!(progress.consumed, raw.len());
        split_responses(&out)
    }

    fn exchange(imds: &Imds, raw: &str) -> Vec<Parsed> {
        exchange_at(imds, raw, Instant::now())
    }

    fn one(imds: &Imds, raw: &str) -> Parsed {
        exchange(imds, raw).remove(0)
    }

    fn get(path: &str, token: Option<&str>) -> String {
        let token = token
            .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{token}\r\n")
    }

    fn put_token(ttl: Option<&str>) -> String {
        let ttl = ttl
            .map(|t| format!("X-aws-ec2-metadata-token-ttl-seconds: {t}\r\n"))
            .unwrap_or_default();
        format!("PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n{ttl}\r\n")
    }

    fn new_token(imds: &Imds) -> String {
        let r = one(imds, &put_token(Some("21600")));
        assert_eq!(r.status, 200);
        r.body
    }

    #[test]
    fn token_put_with_ttl() {
        let imds = imds(Mode::Required);
        let r = one(&imds, &put_token(Some("300")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), crate::tokens::TOKEN_LEN);
        assert_eq!(
            r.header("x-aws-ec2-metadata-token-ttl-seconds"),
            Some("300")
        );
    }

    #[test]
    fn token_put_without_or_with_bad_ttl_is_400() {
        let imds = imds(Mode::Optional);
        assert_eq!(one(&imds, &put_token(None)).status, 400);
        for bad in ["0", "21601", "-5", "abc", ""] {
            assert_eq!(one(&imds, &put_token(Some(bad))).status, 400, "ttl {bad:?}");
        }
        assert_eq!(one(&imds, &put_token(Some("1"))).status, 200);
    }

    #[test]
    fn token_put_through_proxy_is_403() {
        let imds = imds(Mode::Optional);
        let raw = "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 10.1.1.1\r\n\
                   X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        assert_eq!(one(&imds, raw).status, 403);
    }

    #[test]
    fn v1_get_depends_on_mode() {
        let r = one(
            &imds(Mode::Optional),
            &get("/latest/meta-data/instance-id", None),
        );
        assert_eq!((r.status, r.body.as_str()), (200, "i-0123456789abcdef0"));
        assert_eq!(
            one(
                &imds(Mode::Required),
                &get("/latest/meta-data/instance-id", None)
            )
            .status,
            401
        );
    }

    #[test]
    fn get_with_valid_token_in_both_modes() {
        for mode in [Mode::Optional, Mode::Required] {
            let imds = imds(mode);
            let token = new_token(&imds);
            let r = one(
                &imds,
                &get("/latest/meta-data/placement/region", Some(&token)),
            );
            assert_eq!((r.status, r.body.as_str()), (200, "us-east-1"));
        }
    }

    #[test]
    fn get_with_invalid_token_is_401_even_in_optional_mode() {
        let imds = imds(Mode::Optional);
        let token = new_token(&imds);
        let mut forged = token.into_bytes();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        for bad in [forged.as_str(), "", "short"] {
            assert_eq!(
                one(&imds, &get("/latest/meta-data/", Some(bad))).status,
                401,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expired_token_is_401() {
        let imds = imds(Mode::Required);
        let t0 = Instant::now();
        let token = exchange_at(&imds, &put_token(Some("2")), t0).remove(0).body;
        let path = "/latest/meta-data/ami-id";
        assert_eq!(
            exchange_at(&imds, &get(path, Some(&token)), t0 + Duration::from_secs(1))[0].status,
            200
        );
        assert_eq!(
            exchange_at(&imds, &get(path, Some(&token)), t0 + Duration::from_secs(2))[0].status,
            401
        );
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let imds = imds(Mode::Required);
        let r = one(
            &imds,
            "PUT /latest/api/token HTTP/1.1\r\nx-AWS-ec2-METADATA-token-TTL-seconds: 60\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        let raw = format!(
            "GET /latest/meta-data/ HTTP/1.1\r\nX-AWS-EC2-METADATA-TOKEN: {}\r\n\r\n",
            r.body
        );
        assert_eq!(one(&imds, &raw).status, 200);
    }

    #[test]
    fn pipelined_v2_session() {
        let imds = imds(Mode::Required);
        let token = new_token(&imds);
        let raw = [
            get("/latest/meta-data/iam/security-credentials/", Some(&token)),
            get(
                "/latest/meta-data/iam/security-credentials/fake-role",
                Some(&token),
            ),
            put_token(Some("60")),
            get("/latest/meta-data/instance-id", None),
        ]
        .concat();
        let r = exchange(&imds, &raw);
        let statuses: Vec<_> = r.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 200, 200, 401]);
        assert_eq!(r[0].body, "fake-role");
        assert!(r[1].body.contains("\"Type\" : \"AWS-HMAC\""));
    }

    #[test]
    fn trailing_slash_and_query_are_ignored() {
        let imds = imds(Mode::Optional);
        for path in [
            "/latest/meta-data",
            "/latest/meta-data/",
            "/latest/meta-data/instance-id/",
            "/latest/meta-data/iam/security-credentials",
            "/latest/dynamic/instance-identity/document?x=1",
        ] {
            assert_eq!(one(&imds, &get(path, None)).status, 200, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        let imds = imds(Mode::Optional);
        for path in [
            "/latest/meta-data/nope",
            "/meta-data/instance-id",
            "/latest/user-data",
            "/latest/meta-data//",
        ] {
            assert_eq!(one(&imds, &get(path, None)).status, 404, "{path}");
        }
    }

    #[test]
    fn wrong_methods_are_405() {
        let imds = imds(Mode::Optional);
        assert_eq!(one(&imds, &get("/latest/api/token", None)).status, 405);
        assert_eq!(
            one(
                &imds,
                "POST /latest/meta-data/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
            )
            .status,
            405
        );
        assert_eq!(
            one(&imds, "PUT /latest/meta-data/ HTTP/1.1\r\n\r\n").status,
            405
        );
    }

    #[test]
    fn token_put_with_body_then_pipelined_get() {
        let imds = imds(Mode::Required);
        let raw = "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\
                   Content-Length: 5\r\n\r\nhello";
        let token = one(&imds, raw).body;
        let r = exchange(
            &imds,
            &format!("{raw}{}", get("/latest/meta-data/ami-id", Some(&token))),
        );
        assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200]);
    }
}
