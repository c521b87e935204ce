//! The fake instance's metadata tree. Every value is static so serving one is a memcpy.
//! All identifiers are visibly fake; the credentials grant nothing anywhere.

// A literal macro rather than consts because `concat!` only accepts literals, and the same
// ids must agree between plain values and the JSON documents.
#[rustfmt::skip]
macro_rules! fact {
    (instance_id)   => { "i-0123456789abcdef0" };
    (ami_id)        => { "ami-0abcdef1234567890" };
    (account_id)    => { "123456789012" };
    (region)        => { "us-east-1" };
    (zone)          => { "us-east-1a" };
    (instance_type) => { "t3.micro" };
    (private_ip)    => { "10.0.0.12" };
    (role)          => { "fake-role" };
    (updated)       => { "2024-01-01T00:00:00Z" };
}

// Laid out one JSON line per source line; rustfmt would split every `concat!` argument.
#[rustfmt::skip]
const CREDENTIALS: &str = concat!(
    "{\n",
    "  \"Code\" : \"Success\",\n",
    "  \"LastUpdated\" : \"", fact!(updated), "\",\n",
    "  \"Type\" : \"AWS-HMAC\",\n",
    "  \"AccessKeyId\" : \"ASIAEXAMPLEFAKEIMDS1\",\n",
    "  \"SecretAccessKey\" : \"fake/secret/imds-probe/EXAMPLEKEYnotREAL000\",\n",
    "  \"Token\" : \"FAKE-SESSION-TOKEN/imds-probe/this-is-not-a-real-credential\",\n",
    "  \"Expiration\" : \"2099-01-01T00:00:00Z\"\n",
    "}"
);

#[rustfmt::skip]
const IAM_INFO: &str = concat!(
    "{\n",
    "  \"Code\" : \"Success\",\n",
    "  \"LastUpdated\" : \"", fact!(updated), "\",\n",
    "  \"InstanceProfileArn\" : \"arn:aws:iam::", fact!(account_id), ":instance-profile/", fact!(role), "\",\n",
    "  \"InstanceProfileId\" : \"AIPAEXAMPLEFAKEIMDS01\"\n",
    "}"
);

#[rustfmt::skip]
const IDENTITY_DOCUMENT: &str = concat!(
    "{\n",
    "  \"accountId\" : \"", fact!(account_id), "\",\n",
    "  \"architecture\" : \"x86_64\",\n",
    "  \"availabilityZone\" : \"", fact!(zone), "\",\n",
    "  \"billingProducts\" : null,\n",
    "  \"devpayProductCodes\" : null,\n",
    "  \"marketplaceProductCodes\" : null,\n",
    "  \"imageId\" : \"", fact!(ami_id), "\",\n",
    "  \"instanceId\" : \"", fact!(instance_id), "\",\n",
    "  \"instanceType\" : \"", fact!(instance_type), "\",\n",
    "  \"kernelId\" : null,\n",
    "  \"pendingTime\" : \"", fact!(updated), "\",\n",
    "  \"privateIp\" : \"", fact!(private_ip), "\",\n",
    "  \"ramdiskId\" : null,\n",
    "  \"region\" : \"", fact!(region), "\",\n",
    "  \"version\" : \"2017-09-30\"\n",
    "}"
);

/// The body at `path`, which has its query and any trailing slash already removed:
/// like real IMDS, directories and leaves answer with or without one. Like real IMDS, every
/// dated API version (`/2009-04-04/meta-data/...`, which cloud-init's Ec2 datasource crawls)
/// serves the tree `/latest` does.
pub fn lookup(path: &str) -> Option<&'static str> {
    let latest;
    let path = match dated_version(path) {
        Some(rest) => {
            latest = format!("/latest{rest}");
            latest.as_str()
        }
        None => path,
    };
    let body = match path {
        "" => "latest",
        "/latest" => "dynamic\nmeta-data",
        "/latest/meta-data" => concat!(
            "ami-id\nami-launch-index\nhostname\niam/\ninstance-id\ninstance-type\n",
            "local-hostname\nlocal-ipv4\nplacement/\nreservation-id\nsecurity-groups"
        ),
        "/latest/meta-data/ami-id" => fact!(ami_id),
        "/latest/meta-data/ami-launch-index" => "0",
        "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname" => {
            "ip-10-0-0-12.ec2.internal"
        }
        "/latest/meta-data/instance-id" => fact!(instance_id),
        "/latest/meta-data/instance-type" => fact!(instance_type),
        "/latest/meta-data/local-ipv4" => fact!(private_ip),
        "/latest/meta-data/reservation-id" => "r-0123456789abcdef0",
        "/latest/meta-data/security-groups" => "default",
        "/latest/meta-data/placement" => "availability-zone\nregion",
        "/latest/meta-data/placement/availability-zone" => fact!(zone),
        "/latest/meta-data/placement/region" => fact!(region),
        "/latest/meta-data/iam" => "info\nsecurity-credentials/",
        "/latest/meta-data/iam/info" => IAM_INFO,
        "/latest/meta-data/iam/security-credentials" => fact!(role),
        concat!("/latest/meta-data/iam/security-credentials/", fact!(role)) => CREDENTIALS,
        "/latest/dynamic" => "instance-identity/",
        "/latest/dynamic/instance-identity" => "document",
        "/latest/dynamic/instance-identity/document" => IDENTITY_DOCUMENT,
        _ => return None,
    };
    Some(body)
}

/// What follows `/YYYY-MM-DD` at the start of `path`, if it starts with an API version.
fn dated_version(path: &str) -> Option<&str> {
    let version = path.strip_prefix('/')?.get(..10)?;
    let shape = version.bytes().enumerate().all(|(at, byte)| match at {
        4 | 7 => byte == b'-',
        _ => byte.is_ascii_digit(),
    });
    let rest = &path[11..];
    (shape && (rest.is_empty() || rest.starts_with('/'))).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(path: &str) -> serde_json::Value {
        serde_json::from_str(lookup(path).expect("served")).expect("valid JSON")
    }

    #[test]
    fn dated_versions_serve_the_latest_tree() {
        for (dated, latest) in [
            (
                "/2009-04-04/meta-data/instance-id",
                "/latest/meta-data/instance-id",
            ),
            ("/2021-03-23/meta-data", "/latest/meta-data"),
            ("/2021-03-23", "/latest"),
            (
                "/2021-03-23/dynamic/instance-identity/document",
                "/latest/dynamic/instance-identity/document",
            ),
        ] {
            assert_eq!(lookup(dated), lookup(latest), "{dated}");
            assert!(lookup(dated).is_some(), "{dated}");
        }
        for not_dated in [
            "/2009-4-04/meta-data",
            "/2009-04-04x/meta-data",
            "/20090404ab/x",
        ] {
            assert_eq!(lookup(not_dated), None, "{not_dated}");
        }
    }

    #[test]
    fn credentials_look_like_real_imds() {
        let creds = json("/latest/meta-data/iam/security-credentials/fake-role");
        for key in [
            "Code",
            "LastUpdated",
            "Type",
            "AccessKeyId",
            "SecretAccessKey",
            "Token",
            "Expiration",
        ] {
            assert!(creds[key].is_string(), "{key}");
        }
        assert_eq!(creds["Type"], "AWS-HMAC");
        assert_eq!(creds["Code"], "Success");
    }

    #[test]
    fn documents_agree_with_leaves() {
        let doc = json("/latest/dynamic/instance-identity/document");
        assert_eq!(
            doc["instanceId"],
            lookup("/latest/meta-data/instance-id").expect("served")
        );
        assert_eq!(
            doc["region"],
            lookup("/latest/meta-data/placement/region").expect("served")
        );
        assert_eq!(
            doc["imageId"],
            lookup("/latest/meta-data/ami-id").expect("served")
        );
        let info = json("/latest/meta-data/iam/info");
        assert!(
            info["InstanceProfileArn"]
                .as_str()
                .expect("string")
                .ends_with(fact!(role))
        );
    }

    #[test]
    fn listings_name_served_paths() {
        for (dir, listing) in [
            ("/latest/meta-data", lookup("/latest/meta-data")),
            (
                "/latest/meta-data/placement",
                lookup("/latest/meta-data/placement"),
            ),
            ("/latest/meta-data/iam", lookup("/latest/meta-data/iam")),
            (
                "/latest/dynamic/instance-identity",
                lookup("/latest/dynamic/instance-identity"),
            ),
        ] {
            for entry in listing.expect("served").lines() {
                let path = format!("{dir}/{}", entry.trim_end_matches('/'));
                assert!(lookup(&path).is_some(), "{path} listed but not served");
            }
        }
    }
}
