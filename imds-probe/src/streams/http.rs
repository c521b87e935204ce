//! Parsing one HTTP/1.x request head out of captured bytes. Only what classification and
//! the event need is kept; header values other than User-Agent and the token TTL are never
//! copied (another cloud's metadata header is kept as the cloud it names), so a token cannot
//! leak through here.

use crate::streams::probe::{Cloud, cloud_of_header};

/// Header blocks up to this size are parsed; a larger one makes the request `unknown`.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers per request; more makes the request `unknown`.
const MAX_HEADERS: usize = 256;
/// Longest path and User-Agent written to an event; longer ones are cut and marked.
const MAX_FIELD_CHARS: usize = 1024;

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// "1.0" or "1.1".
    pub http_version: &'static str,
    pub user_agent: Option<String>,
    /// Whether an X-aws-ec2-metadata-token header was present (its value is never kept).
    pub has_token: bool,
    /// X-aws-ec2-metadata-token-ttl-seconds, when it is a number.
    pub token_ttl_seconds: Option<u32>,
    /// Another cloud's metadata header (`Metadata-Flavor: Google`, ...); see `probe`.
    pub cloud_header: Option<Cloud>,
    pub body: Body,
    /// Bytes of the head, through the blank line.
    pub head_len: usize,
}

/// How the request's body is delimited, which decides where the next request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    /// Chunked or otherwise not delimited by a length we can skip.
    Undelimited,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes are not an HTTP/1.x request head.
    NotHttp,
    TooManyHeaders,
    /// More than one Content-Length, or one that is not a number.
    BadContentLength,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Complete(RequestHead),
    /// More bytes are needed.
    Partial,
    Invalid(Invalid),
}

pub fn parse_head(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(Invalid::TooManyHeaders),
        Err(_) => return Parsed::Invalid(Invalid::NotHttp),
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Parsed::Invalid(Invalid::NotHttp);
    };
    let mut head = RequestHead {
        method: method.to_owned(),
        path: bounded(path.as_bytes()),
        http_version: if version == 0 { "1.0" } else { "1.1" },
        user_agent: None,
        has_token: false,
        token_ttl_seconds: None,
        cloud_header: None,
        body: Body::None,
        head_len,
    };
    let mut content_length = None;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case(TOKEN_HEADER) {
            head.has_token = true;
        } else if name.eq_ignore_ascii_case(TOKEN_TTL_HEADER) {
            head.token_ttl_seconds = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if name.eq_ignore_ascii_case("user-agent") {
            head.user_agent = Some(bounded(header.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (content_length, parsed) {
                (None, Some(len)) => content_length = Some(len),
                (Some(previous), Some(len)) if previous == len => {}
                _ => return Parsed::Invalid(Invalid::BadContentLength),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.body = Body::Undelimited;
        } else if let Some(cloud) = cloud_of_header(name, header.value) {
            head.cloud_header = Some(cloud);
        }
    }
    if head.body == Body::None {
        head.body = match content_length {
            Some(0) | None => Body::None,
            Some(len) => Body::Length(len),
        };
    }
    Parsed::Complete(head)
}

fn bounded(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= MAX_FIELD_CHARS {
        return text.into_owned();
    }
    let mut cut: String = text.chars().take(MAX_FIELD_CHARS).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> RequestHead {
        match parse_head(bytes) {
            Parsed::Complete(head) => head,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn reads_fields_in_any_header_case() {
        let head = complete(
            b"PUT /latest/api/token HTTP/1.1\r\nhost: x\r\nX-AWS-EC2-METADATA-TOKEN-TTL-SECONDS: 21600\r\n\
              user-agent: aws-sdk-go/1.0\r\n\r\n",
        );
        assert_eq!(head.method, "PUT");
        assert_eq!(head.path, "/latest/api/token");
        assert_eq!(head.token_ttl_seconds, Some(21600));
        assert_eq!(head.user_agent.as_deref(), Some("aws-sdk-go/1.0"));
        assert!(!head.has_token);
        assert!(complete(b"GET / HTTP/1.0\r\nx-aws-ec2-metadata-token: abc\r\n\r\n").has_token);
    }

    #[test]
    fn body_delimitation() {
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").body,
            Body::Length(5)
        );
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").body,
            Body::None
        );
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").body,
            Body::Undelimited
        );
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Parsed::Invalid(Invalid::BadContentLength)
        );
    }

    #[test]
    fn partial_and_invalid() {
        assert_eq!(
            parse_head(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
        assert_eq!(
            parse_head(b"\x16\x03\x01\x02\x00\x01\x00"),
            Parsed::Invalid(Invalid::NotHttp)
        );
        assert_eq!(
            parse_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Parsed::Invalid(Invalid::NotHttp)
        );
        let many: String = (0..300).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Parsed::Invalid(Invalid::TooManyHeaders)
        );
    }

    #[test]
    fn long_fields_are_cut() {
        let path = format!("/{}", "a".repeat(5000));
        let head = complete(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(head.path.chars().count(), MAX_FIELD_CHARS + 1);
    }
}
