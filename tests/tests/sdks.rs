//! The AWS SDKs as real IMDS clients: botocore (PyPI) and the JavaScript SDK v3's IMDS
//! credential provider (npm), installed by `cargo xtask setup` into the toolchain prefix.
//! Both fetch a token first and then call with it: every call must be seen and classified.

use imds_probe_tests::Setup;
use serde_json::Value;

const SDK_DIR: &str = "/opt/imds-probe-toolchain/sdk";

/// Runs one SDK client against a fake IMDS that requires tokens and returns the request
/// events of its process, or None where `Setup::new` skips.
fn requests_of(program: &str, args: &[&str]) -> Option<Vec<Value>> {
    assert!(
        std::path::Path::new(SDK_DIR).is_dir(),
        "{SDK_DIR} is missing: run `cargo xtask setup`"
    );
    Some(Setup::new("required", &[])?.requests_of(program, args))
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["class"].as_str().unwrap(),
                e["method"].as_str().unwrap_or("-"),
                e["path"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

const ROLE_LIST: &str = "/latest/meta-data/iam/security-credentials/";
const ROLE: &str = "/latest/meta-data/iam/security-credentials/fake-role";

#[test]
fn botocore_fetches_credentials_with_a_token() {
    let code = "from botocore.utils import InstanceMetadataFetcher\n\
                creds = InstanceMetadataFetcher(timeout=5, num_attempts=1).retrieve_iam_role_credentials()\n\
                assert creds.get('access_key'), creds\n";
    let python_path = format!("PYTHONPATH={SDK_DIR}/python");
    let Some(events) = requests_of("env", &[&python_path, "/usr/bin/python3", "-c", code]) else {
        return;
    };
    assert_eq!(
        summary(&events),
        [
            "token PUT /latest/api/token",
            &format!("imdsv2 GET {ROLE_LIST}"),
            &format!("imdsv2 GET {ROLE}")
        ]
    );
    assert!(events[0]["token_ttl_seconds"].as_u64().is_some());
    // botocore's fetcher leaves the User-Agent to urllib3.
    assert!(
        events[1]["user_agent"]
            .as_str()
            .unwrap()
            .starts_with("python-urllib3/"),
        "{:#}",
        events[1]
    );
}

#[test]
fn the_javascript_sdk_fetches_credentials_with_a_token() {
    let code = format!(
        "const {{ fromInstanceMetadata }} = require('{SDK_DIR}/node/node_modules/@aws-sdk/credential-provider-imds');\n\
         fromInstanceMetadata({{ timeout: 5000, maxRetries: 0 }})()\n\
           .then(c => {{ if (!c.accessKeyId) process.exit(2); }})\n\
           .catch(e => {{ console.error(e); process.exit(1); }});\n"
    );
    let Some(events) = requests_of("node", &["-e", &code]) else {
        return;
    };
    let classes: Vec<_> = events
        .iter()
        .map(|e| e["class"].as_str().unwrap())
        .collect();
    assert!(classes.contains(&"token"), "{:?}", summary(&events));
    assert!(
        !classes.contains(&"imdsv1"),
        "the SDK sends a token with every call: {:?}",
        summary(&events)
    );
    assert!(
        events.iter().any(|e| e["path"] == ROLE),
        "{:?}",
        summary(&events)
    );
}
