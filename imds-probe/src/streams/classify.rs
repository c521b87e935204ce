//! One class per request. The rules are deliberately few: what decides whether a caller
//! breaks under HttpTokens=required is whether it sends a token, and whether it fetches one.

use serde::Serialize;

use crate::streams::http::RequestHead;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// PUT /latest/api/token: the caller is fetching an IMDSv2 session token.
    Token,
    /// A request carrying X-aws-ec2-metadata-token.
    Imdsv2,
    /// A complete request without a token: breaks when IMDSv2 is required.
    Imdsv1,
    /// We could not see the whole request head; see the event's `reason`.
    Unknown,
}

const TOKEN_PATH: &str = "/latest/api/token";

pub fn classify(head: &RequestHead) -> Class {
    if head.method == "PUT" && head.path == TOKEN_PATH {
        Class::Token
    } else if head.has_token {
        Class::Imdsv2
    } else {
        Class::Imdsv1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::http::{Parsed, parse_head};

    fn class_of(request: &str) -> Class {
        match parse_head(request.as_bytes()) {
            Parsed::Complete(head) => classify(&head),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classes() {
        assert_eq!(
            class_of(
                "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"
            ),
            Class::Token
        );
        assert_eq!(
            class_of("GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\r\n"),
            Class::Imdsv2
        );
        assert_eq!(
            class_of("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n"),
            Class::Imdsv1
        );
        // A token GET with the wrong method is a token-less request, which is what IMDS sees.
        assert_eq!(
            class_of("GET /latest/api/token HTTP/1.1\r\n\r\n"),
            Class::Imdsv1
        );
    }
}
