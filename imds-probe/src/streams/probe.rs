//! Other clouds' metadata probes. Agents that look for GCE, Azure, OpenStack, DigitalOcean or
//! Oracle metadata connect to 169.254.169.254 too; on EC2 their requests fail whatever the
//! IMDS setting, so requiring IMDSv2 breaks nothing of theirs. They are marked (`probe_of`) and
//! listed apart, never as callers that would break.

use serde::{Deserialize, Serialize};

use crate::streams::http::RequestHead;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    Gce,
    Azure,
    Openstack,
    Digitalocean,
    Oracle,
}

/// The cloud a header marks a request for: each cloud's metadata service demands one of its
/// own (`Metadata-Flavor: Google`, `Metadata: true`, `Authorization: Bearer Oracle`).
pub fn cloud_of_header(name: &str, value: &[u8]) -> Option<Cloud> {
    let value = std::str::from_utf8(value).ok()?.trim();
    if name.eq_ignore_ascii_case("metadata-flavor") && value.eq_ignore_ascii_case("google") {
        Some(Cloud::Gce)
    } else if name.eq_ignore_ascii_case("metadata") && value.eq_ignore_ascii_case("true") {
        Some(Cloud::Azure)
    } else if name.eq_ignore_ascii_case("authorization")
        && value.eq_ignore_ascii_case("bearer oracle")
    {
        Some(Cloud::Oracle)
    } else {
        None
    }
}

/// Which other cloud's metadata this request looks for, or None for an EC2 request. OpenStack
/// also serves EC2's `/latest/...` tree; requests there are EC2 requests, as they would break.
pub fn probe_of(head: &RequestHead) -> Option<Cloud> {
    if head.cloud_header.is_some() {
        return head.cloud_header;
    }
    let path = head.path.as_str();
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
    };
    if under("/computeMetadata") {
        Some(Cloud::Gce)
    } else if under("/metadata/instance") || under("/metadata/identity") {
        Some(Cloud::Azure)
    } else if under("/metadata/v1") || path == "/metadata/v1.json" {
        Some(Cloud::Digitalocean)
    } else if under("/openstack") {
        Some(Cloud::Openstack)
    } else if under("/opc/v1") || under("/opc/v2") {
        Some(Cloud::Oracle)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::http::{Parsed, parse_head};

    fn probe(request: &str) -> Option<Cloud> {
        match parse_head(request.as_bytes()) {
            Parsed::Complete(head) => probe_of(&head),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_clouds_by_path_or_header() {
        // google-guest-agent and cloud-init's GCE datasource.
        assert_eq!(
            probe(
                "GET /computeMetadata/v1/instance/id HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n"
            ),
            Some(Cloud::Gce)
        );
        assert_eq!(
            probe("GET / HTTP/1.1\r\nmetadata-flavor: Google\r\n\r\n"),
            Some(Cloud::Gce)
        );
        // waagent / Azure IMDS.
        assert_eq!(
            probe(
                "GET /metadata/instance?api-version=2021-02-01 HTTP/1.1\r\nMetadata: true\r\n\r\n"
            ),
            Some(Cloud::Azure)
        );
        assert_eq!(
            probe("GET /metadata/v1.json HTTP/1.1\r\n\r\n"),
            Some(Cloud::Digitalocean)
        );
        assert_eq!(
            probe("GET /openstack/latest/meta_data.json HTTP/1.1\r\n\r\n"),
            Some(Cloud::Openstack)
        );
        assert_eq!(
            probe("GET /opc/v2/instance/ HTTP/1.1\r\nAuthorization: Bearer Oracle\r\n\r\n"),
            Some(Cloud::Oracle)
        );
    }

    #[test]
    fn ec2_requests_are_not_probes() {
        assert_eq!(probe("GET /latest/meta-data/ HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            probe("GET /computeMetadataX HTTP/1.1\r\n\r\n"),
            None,
            "a prefix of a word is not the path"
        );
        assert_eq!(probe("GET /metadata/other HTTP/1.1\r\n\r\n"), None);
        assert_eq!(
            probe("GET /latest/meta-data/ HTTP/1.1\r\nMetadata: false\r\n\r\n"),
            None
        );
    }
}
