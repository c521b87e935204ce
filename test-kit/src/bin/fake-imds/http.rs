//! HTTP/1.x framing for one connection, free of I/O: bytes in, responses out. Handles
//! keep-alive, pipelining (many requests per read), requests split across reads, and
//! Content-Length bodies, which are skipped as they arrive rather than buffered.

use crate::tokens::Token;

/// Real clients send a few hundred bytes of head; the tests also send large heads (the probe
/// must parse 16 KiB and more), which are answered normally up to these limits, the probe's own.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Other,
}

/// The parts of a request the IMDS logic looks at, borrowed from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: Method,
    pub path: &'a str,
    pub token: Option<&'a [u8]>,
    pub ttl: Option<&'a [u8]>,
    /// Real IMDS refuses to mint tokens for requests that went through a proxy.
    pub forwarded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    HeaderTooLarge,
    InternalError,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "HTTP/1.1 200 OK\r\n",
            Status::BadRequest => "HTTP/1.1 400 Bad Request\r\n",
            Status::Unauthorized => "HTTP/1.1 401 Unauthorized\r\n",
            Status::Forbidden => "HTTP/1.1 403 Forbidden\r\n",
            Status::NotFound => "HTTP/1.1 404 Not Found\r\n",
            Status::MethodNotAllowed => "HTTP/1.1 405 Method Not Allowed\r\n",
            Status::HeaderTooLarge => "HTTP/1.1 431 Request Header Fields Too Large\r\n",
            Status::InternalError => "HTTP/1.1 500 Internal Server Error\r\n",
        }
    }
}

#[derive(Debug)]
pub enum Body {
    Static(&'static str),
    Token(Token),
}

impl Body {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(s) => s.as_bytes(),
            Body::Token(t) => t.as_bytes(),
        }
    }
}

/// Error pages mimic IMDS's small XHTML documents, so clients that log bodies see the
/// shape they would in production.
macro_rules! error_page {
    ($title:literal) => {
        concat!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n",
            "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\"\n",
            "\t\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n",
            "<html xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"en\" lang=\"en\">\n",
            " <head>\n  <title>",
            $title,
            "</title>\n </head>\n <body>\n  <h1>",
            $title,
            "</h1>\n </body>\n</html>\n"
        )
    };
}

#[derive(Debug)]
pub struct Response {
    pub status: Status,
    pub content_type: &'static str,
    pub body: Body,
    /// Echoed on token responses, as real IMDS does.
    pub ttl: Option<u32>,
}

impl Response {
    pub fn text(body: &'static str) -> Self {
        Self {
            status: Status::Ok,
            content_type: "text/plain",
            body: Body::Static(body),
            ttl: None,
        }
    }

    pub fn error(status: Status) -> Self {
        let body = match status {
            Status::Ok => "",
            Status::BadRequest => error_page!("400 - Bad Request"),
            Status::Unauthorized => error_page!("401 - Unauthorized"),
            Status::Forbidden => error_page!("403 - Forbidden"),
            Status::NotFound => error_page!("404 - Not Found"),
            Status::MethodNotAllowed => error_page!("405 - Method Not Allowed"),
            Status::HeaderTooLarge => error_page!("431 - Request Header Fields Too Large"),
            Status::InternalError => error_page!("500 - Internal Server Error"),
        };
        Self {
            status,
            content_type: "text/html",
            body: Body::Static(body),
            ttl: None,
        }
    }
}

/// What one call to [`Conn::serve`] did with the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of input fully dealt with; the caller drops them and keeps the rest.
    pub consumed: usize,
    /// The last response written ends the connection.
    pub close: bool,
}

/// Per-connection parser state that must survive between reads.
#[derive(Debug, Default)]
pub struct Conn {
    /// Body bytes of the previous request still to be skipped.
    body_left: u64,
}

impl Conn {
    /// Answers every complete request at the front of `input`, appending the responses to
    /// `out` in order. A trailing partial request is left unconsumed for the next read.
    pub fn serve(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        handle: &mut impl FnMut(&Request<'_>) -> Response,
    ) -> Progress {
        let mut pos = 0;
        loop {
            pos += self.skip_body(&input[pos..]);
            if self.body_left > 0 || pos == input.len() {
                return Progress {
                    consumed: pos,
                    close: false,
                };
            }
            match parse(&input[pos..]) {
                Parsed::Partial if input.len() - pos > MAX_HEAD => {
                    return fail(out, Status::HeaderTooLarge, input.len());
                }
                Parsed::Partial => {
                    return Progress {
                        consumed: pos,
                        close: false,
                    };
                }
                Parsed::Invalid => return fail(out, Status::BadRequest, input.len()),
                Parsed::Complete {
                    request,
                    head_len,
                    body_len,
                    keep_alive,
                    http10,
                } => {
                    let response = handle(&request);
                    let head_only = request.method == Method::Head;
                    encode(
                        out,
                        &response,
                        head_only,
                        Framing::for_request(keep_alive, http10),
                    );
                    pos += head_len;
                    self.body_left = body_len;
                    if !keep_alive {
                        return Progress {
                            consumed: input.len(),
                            close: true,
                        };
                    }
                }
            }
        }
    }

    fn skip_body(&mut self, input: &[u8]) -> usize {
        let n = usize::try_from(self.body_left).map_or(input.len(), |left| left.min(input.len()));
        self.body_left -= n as u64;
        n
    }
}

fn fail(out: &mut Vec<u8>, status: Status, consumed: usize) -> Progress {
    encode(out, &Response::error(status), false, Framing::Close);
    Progress {
        consumed,
        close: true,
    }
}

enum Parsed<'a> {
    Partial,
    Invalid,
    Complete {
        request: Request<'a>,
        head_len: usize,
        body_len: u64,
        keep_alive: bool,
        http10: bool,
    },
}

fn parse(input: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Invalid;
    };
    let http10 = version == 0;
    let mut request = Request {
        method: match method {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            _ => Method::Other,
        },
        path,
        token: None,
        ttl: None,
        forwarded: false,
    };
    let mut body_len = None;
    let mut keep_alive = !http10;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (parse_decimal(h.value), body_len) {
                (Some(n), None) => body_len = Some(n),
                // Repeats are legal only if they agree; anything else is a smuggling vector.
                (Some(n), Some(prev)) if n == prev => {}
                _ => return Parsed::Invalid,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // No IMDS client streams a chunked body; refusing it keeps body framing trivial.
            return Parsed::Invalid;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-aws-ec2-metadata-token") {
            request.token.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"x-aws-ec2-metadata-token-ttl-seconds") {
            request.ttl.get_or_insert(h.value);
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            request.forwarded = true;
        }
    }
    Parsed::Complete {
        request,
        head_len,
        body_len: body_len.unwrap_or(0),
        keep_alive,
        http10,
    }
}

/// Strict: digits only, no sign, no blanks inside, no overflow.
pub fn parse_decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HTTP/1.1 default; nothing to say.
    Persistent,
    /// HTTP/1.0 client that asked for keep-alive must hear it confirmed, or it will wait for EOF.
    KeepAlive10,
    Close,
}

impl Framing {
    fn for_request(keep_alive: bool, http10: bool) -> Self {
        match (keep_alive, http10) {
            (false, _) => Framing::Close,
            (true, true) => Framing::KeepAlive10,
            (true, false) => Framing::Persistent,
        }
    }
}

fn encode(out: &mut Vec<u8>, response: &Response, head_only: bool, framing: Framing) {
    let body = response.body.as_bytes();
    out.extend_from_slice(response.status.line().as_bytes());
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(response.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, body.len() as u64);
    if let Some(ttl) = response.ttl {
        out.extend_from_slice(b"\r\nX-Aws-Ec2-Metadata-Token-Ttl-Seconds: ");
        push_decimal(out, u64::from(ttl));
    }
    match framing {
        Framing::Persistent => {}
        Framing::KeepAlive10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Framing::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    out.extend_from_slice(b"\r\nServer: EC2ws\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// `write!` would do, but it returns an io::Result that cannot fail on a Vec.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Splits a byte stream of responses back into (status, headers, body); shared by the tests
/// of this module and of the routes.
#[cfg(test)]
pub mod testing {
    pub struct Parsed {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Parsed {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    pub fn split_responses(mut bytes: &[u8]) -> Vec<Parsed> {
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head) = resp.parse(bytes).expect("valid response")
            else {
                panic!("truncated response");
            };
            let headers: Vec<_> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8(h.value.to_vec()).expect("utf-8"),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().expect("numeric length"))
                .expect("Content-Length always present");
            let body = String::from_utf8(bytes[head..head + len].to_vec()).expect("utf-8");
            all.push(Parsed {
                status: resp.code.expect("status"),
                headers,
                body,
            });
            bytes = &bytes[head + len..];
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::split_responses, *};

    /// Echoes the path so tests can see which request produced which response.
    fn echo(req: &Request<'_>) -> Response {
        let body: &'static str = Box::leak(req.path.to_owned().into_boxed_str());
        Response::text(body)
    }

    fn serve_all(conn: &mut Conn, input: &[u8]) -> (Vec<u8>, Progress) {
        let mut out = Vec::new();
        let progress = conn.serve(input, &mut out, &mut echo);
        (out, progress)
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let input =
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n";
        let (out, progress) = serve_all(&mut Conn::default(), input);
        assert_eq!(
            progress,
            Progress {
                consumed: input.len(),
                close: false
            }
        );
        let bodies: Vec<_> = split_responses(&out).into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, ["/a", "/b", "/c"]);
    }

    #[test]
    fn request_split_across_reads() {
        let mut conn = Conn::default();
        let first = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT";
        let (out, progress) = serve_all(&mut conn, first);
        assert_eq!(
            progress,
            Progress {
                consumed: 28,
                close: false
            }
        );
        assert_eq!(split_responses(&out).len(), 1);

        let mut second = first[progress.consumed..].to_vec();
        second.extend_from_slice(b"TP/1.1\r\n\r\n");
        let (out, progress) = serve_all(&mut conn, &second);
        assert_eq!(
            progress,
            Progress {
                consumed: second.len(),
                close: false
            }
        );
        assert_eq!(split_responses(&out)[0].body, "/b");
    }

    #[test]
    fn content_length_body_is_skipped_even_across_reads() {
        let mut conn = Conn::default();
        let (out, progress) = serve_all(
            &mut conn,
            b"PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123",
        );
        assert_eq!(progress.consumed, 43);
        assert_eq!(split_responses(&out)[0].body, "/a");
        let (out, progress) = serve_all(&mut conn, b"456789GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(
            progress,
            Progress {
                consumed: 25,
                close: false
            }
        );
        assert_eq!(split_responses(&out)[0].body, "/b");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let (out, progress) = serve_all(
            &mut Conn::default(),
            b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
        );
        assert!(progress.close);
        let responses = split_responses(&out);
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].header("connection"), Some("close"));

        let (out, progress) = serve_all(
            &mut Conn::default(),
            b"GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        );
        assert!(!progress.close);
        assert_eq!(
            split_responses(&out)[0].header("connection"),
            Some("keep-alive")
        );
    }

    #[test]
    fn http11_connection_close() {
        let (out, progress) = serve_all(
            &mut Conn::default(),
            b"GET /a HTTP/1.1\r\nconnection: TE, close\r\n\r\n",
        );
        assert!(progress.close);
        assert_eq!(split_responses(&out)[0].header("Connection"), Some("close"));
    }

    #[test]
    fn head_has_length_but_no_body() {
        let (out, _) = serve_all(&mut Conn::default(), b"HEAD /abc HTTP/1.1\r\n\r\n");
        assert!(out.ends_with(b"\r\n\r\n"));
        assert!(
            std::str::from_utf8(&out)
                .expect("ascii")
                .contains("Content-Length: 4\r\n")
        );
    }

    #[test]
    fn malformed_requests_get_400_and_close() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let (out, progress) = serve_all(&mut Conn::default(), bad);
            assert_eq!(
                progress,
                Progress {
                    consumed: bad.len(),
                    close: true
                }
            );
            let responses = split_responses(&out);
            assert_eq!(responses[0].status, 400);
            assert_eq!(responses[0].header("connection"), Some("close"));
        }
    }

    #[test]
    fn good_requests_before_a_bad_one_are_answered() {
        let (out, progress) =
            serve_all(&mut Conn::default(), b"GET /a HTTP/1.1\r\n\r\nBAD\r\n\r\n");
        assert!(progress.close);
        let statuses: Vec<_> = split_responses(&out).iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200, 400]);
    }

    #[test]
    fn endless_head_is_refused() {
        let mut input = b"GET /a HTTP/1.1\r\n".to_vec();
        input.resize(MAX_HEAD + 100, b'a');
        let (out, progress) = serve_all(&mut Conn::default(), &input);
        assert!(progress.close);
        assert_eq!(split_responses(&out)[0].status, 431);
    }

    #[test]
    fn decimal_parsing_is_strict() {
        assert_eq!(parse_decimal(b"21600"), Some(21600));
        assert_eq!(parse_decimal(b" 7 "), Some(7));
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"1 2",
            b"1e3",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn push_decimal_formats() {
        for n in [0u64, 7, 10, 21600, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
