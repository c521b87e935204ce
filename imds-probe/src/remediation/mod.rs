//! What a caller must change before IMDSv2 can be required: its SDK and version from the
//! User-Agent (`user_agent`), compared with the first versions that fetch tokens
//! (`minimums`); a fallback to IMDSv1 told apart from an old SDK; and, for callers that send
//! no User-Agent (botocore 1.12, JS v3, plain sockets), what their executable, command line
//! and request pattern honestly suggest, with how sure that is.

pub mod minimums;
pub mod user_agent;

use serde::Serialize;

use crate::{
    outputs::ledger::caller::Caller,
    remediation::{
        minimums::{minimum, too_old},
        user_agent::{SdkName, parse},
    },
};

/// How the SDK was recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// The User-Agent names it.
    Certain,
    /// The request pattern and executable match what that SDK does.
    Likely,
    /// Only the language runtime points to it.
    Possible,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdkGuess {
    pub name: SdkName,
    /// Null when inferred: no request said it.
    pub version: Option<String>,
    pub confidence: Confidence,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    pub sdk: Option<SdkGuess>,
    pub fallback: bool,
    pub remediation: String,
}

/// Curl, wget and shells: someone wrote the request by hand.
const HAND_MADE: &[&str] = &["curl", "wget", "nc", "ncat", "socat", "bash", "sh", "dash"];

const ADD_A_TOKEN: &str = "fetch a token first (PUT /latest/api/token with \
     X-aws-ec2-metadata-token-ttl-seconds) and send it as X-aws-ec2-metadata-token";

pub fn advise(caller: &Caller) -> Advice {
    let from_agent = caller.user_agents.iter().find_map(|agent| parse(agent));
    let fallback = caller.fallback_requests > 0;
    let sdk = from_agent
        .map(|sdk| SdkGuess {
            name: sdk.name,
            version: Some(sdk.version),
            confidence: Confidence::Certain,
        })
        .or_else(|| infer(caller));
    let remediation = if caller.requests.imdsv1 == 0 {
        if caller.requests.unknown > 0 {
            "requests not fully seen (unknown): check this caller by hand".to_owned()
        } else {
            "nothing: it sends a token with every request".to_owned()
        }
    } else if fallback {
        if caller.container.is_some() || caller.key.container_runtime.is_some() {
            "its token requests got no answer and the SDK fell back to IMDSv1: set \
             HttpPutResponseHopLimit to 2 (the answer must cross the container's extra hop)"
                .to_owned()
        } else {
            "its token requests got no answer and the SDK fell back to IMDSv1: find what \
             drops or delays PUT /latest/api/token (a proxy, a firewall, the hop limit)"
                .to_owned()
        }
    } else {
        match &sdk {
            Some(sdk) => sdk_advice(sdk, caller),
            None if is_hand_made(caller) => format!("a hand-made call: {ADD_A_TOKEN}"),
            None => format!(
                "no SDK recognised: find the IMDS call in {} and {ADD_A_TOKEN}",
                caller.key.exe.as_deref().unwrap_or("this program")
            ),
        }
    };
    Advice {
        sdk,
        fallback,
        remediation,
    }
}

fn sdk_advice(sdk: &SdkGuess, caller: &Caller) -> String {
    let upgrade = |name: SdkName| match minimum(name) {
        Some(min) => format!("upgrade {} to >= {min}", name.package()),
        None => format!("{} supports IMDSv2", name.package()),
    };
    match (&sdk.version, sdk.confidence) {
        (Some(version), _) => match too_old(sdk.name, version) {
            Some(true) => upgrade(sdk.name),
            Some(false) => format!(
                "{} {version} supports IMDSv2: its tokens are turned off by configuration, or \
                 the call is made by hand in {}; {ADD_A_TOKEN}",
                sdk.name.package(),
                caller.key.exe.as_deref().unwrap_or("this program")
            ),
            None => format!("unreadable version {version}: {}", upgrade(sdk.name)),
        },
        (None, Confidence::Likely) => format!(
            "{} (no User-Agent, and this request pattern is a pre-IMDSv2 SDK's)",
            match sdk.name {
                SdkName::Botocore => "upgrade botocore to >= 1.13.25 (boto3 >= 1.12.6)".to_owned(),
                other => upgrade(other),
            }
        ),
        (None, _) => format!(
            "if it uses the AWS SDK, {}; otherwise {ADD_A_TOKEN}",
            upgrade(sdk.name)
        ),
    }
}

fn is_hand_made(caller: &Caller) -> bool {
    let exe = caller.key.exe.as_deref().unwrap_or("");
    HAND_MADE.contains(&exe.rsplit('/').next().unwrap_or(exe))
}

/// For callers without a User-Agent that names an SDK: what the executable, the command line
/// and the request pattern suggest. Hand-made calls name no SDK.
fn infer(caller: &Caller) -> Option<SdkGuess> {
    let exe = caller.key.exe.as_deref()?;
    let base = exe.rsplit('/').next().unwrap_or(exe);
    if is_hand_made(caller) {
        return None;
    }
    let runs = |name: &str| {
        caller
            .key
            .script
            .as_deref()
            .is_some_and(|s| s.ends_with(&format!("/{name}")) || s == name)
    };
    let guess = |name, confidence| {
        Some(SdkGuess {
            name,
            version: None,
            confidence,
        })
    };
    if base.starts_with("python") {
        if runs("aws") {
            // The AWS CLI v1 is a Python script; v2 ships its own executable.
            guess(SdkName::AwsCliV1, Confidence::Likely)
        } else if caller.credentials_without_token {
            // A token-less GET of the role list, then the role: what botocore did before
            // 1.13.25, and botocore 1.12 sends no User-Agent to the IMDS.
            guess(SdkName::Botocore, Confidence::Likely)
        } else {
            guess(SdkName::Botocore, Confidence::Possible)
        }
    } else if base.starts_with("node") {
        guess(SdkName::JsV2, Confidence::Possible)
    } else if base == "java" {
        guess(SdkName::JavaV1, Confidence::Possible)
    } else if base.starts_with("ruby") {
        guess(SdkName::Ruby, Confidence::Possible)
    } else if base.starts_with("php") {
        guess(SdkName::Php, Confidence::Possible)
    } else if base == "aws" {
        guess(SdkName::AwsCliV1, Confidence::Possible)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::{
        event::Timestamp,
        ledger::caller::{CallerKey, Requests},
    };

    fn caller(exe: &str, user_agent: Option<&str>) -> Caller {
        let mut caller = Caller::new(
            CallerKey {
                exe: Some(exe.into()),
                script: None,
                systemd_unit: None,
                container_runtime: None,
            },
            Timestamp(std::time::SystemTime::UNIX_EPOCH),
        );
        caller.requests = Requests {
            imdsv1: 2,
            ..Requests::default()
        };
        caller.user_agents = user_agent.map(str::to_owned).into_iter().collect();
        caller
    }

    #[test]
    fn an_old_sdk_is_told_to_upgrade() {
        let advice = advise(&caller(
            "/usr/bin/python3",
            Some("Botocore/1.12.253 Python/3.7.3 Linux/4.14"),
        ));
        assert_eq!(advice.remediation, "upgrade botocore to >= 1.13.25");
        assert_eq!(
            advice.sdk,
            Some(SdkGuess {
                name: SdkName::Botocore,
                version: Some("1.12.253".into()),
                confidence: Confidence::Certain
            })
        );
        assert!(!advice.fallback);
    }

    #[test]
    fn a_new_sdk_sending_v1_means_configuration_or_a_hand_made_call() {
        let advice = advise(&caller(
            "/usr/local/bin/app",
            Some("aws-sdk-go/1.44.0 (go1.19; linux; amd64)"),
        ));
        assert!(advice.remediation.contains("supports IMDSv2"), "{advice:?}");
    }

    #[test]
    fn a_fallback_is_not_an_old_sdk() {
        let mut c = caller("/usr/bin/python3", Some("Botocore/1.34.0"));
        c.fallback_requests = 1;
        let advice = advise(&c);
        assert!(advice.fallback);
        assert!(advice.remediation.contains("fell back"), "{advice:?}");
        c.key.container_runtime = Some("docker".into());
        assert!(
            advise(&c)
                .remediation
                .contains("set HttpPutResponseHopLimit to 2")
        );
    }

    #[test]
    fn no_user_agent_inferred_from_the_pattern() {
        let mut c = caller("/usr/bin/python3.7", None);
        c.credentials_without_token = true;
        let advice = advise(&c);
        assert_eq!(
            advice.sdk,
            Some(SdkGuess {
                name: SdkName::Botocore,
                version: None,
                confidence: Confidence::Likely
            })
        );
        assert!(
            advice
                .remediation
                .starts_with("upgrade botocore to >= 1.13.25")
        );
        c.credentials_without_token = false;
        assert_eq!(advise(&c).sdk.unwrap().confidence, Confidence::Possible);
        c.key.script = Some("/usr/bin/aws".into());
        assert_eq!(advise(&c).sdk.unwrap().name, SdkName::AwsCliV1);
    }

    #[test]
    fn hand_made_calls_name_no_sdk() {
        let advice = advise(&caller("/usr/bin/curl", Some("curl/7.88.1")));
        assert_eq!(advice.sdk, None);
        assert!(
            advice
                .remediation
                .starts_with("a hand-made call: fetch a token first")
        );
    }

    #[test]
    fn callers_with_tokens_need_nothing() {
        let mut c = caller("/usr/bin/x", None);
        c.requests = Requests {
            imdsv2: 3,
            token: 1,
            ..Requests::default()
        };
        assert!(advise(&c).remediation.starts_with("nothing"));
    }
}
