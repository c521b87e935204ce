//! Which AWS SDK, and which version, a User-Agent names. Each SDK writes `<product>/<version>`
//! tokens; where one User-Agent holds several (boto3 also names botocore, the AWS CLI v1 too,
//! .NET names its runtime flavour and its core), the one whose version decides IMDSv2 support
//! wins: the table in `minimums` is keyed the same way.

use serde::{Deserialize, Serialize};

/// The SDKs of AWS's IMDSv2 table, plus those it leaves out that still send a User-Agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SdkName {
    Botocore,
    Boto3,
    AwsCliV1,
    AwsCliV2,
    GoV1,
    GoV2,
    JavaV1,
    JavaV2,
    JsV2,
    JsV3,
    Ruby,
    Php,
    Dotnet,
    Cpp,
    Rust,
    Powershell,
    CloudwatchAgent,
}

impl SdkName {
    /// What an operator upgrades: the package name as its ecosystem spells it.
    pub const fn package(self) -> &'static str {
        match self {
            Self::Botocore => "botocore",
            Self::Boto3 => "boto3",
            Self::AwsCliV1 => "AWS CLI v1 (awscli)",
            Self::AwsCliV2 => "AWS CLI v2",
            Self::GoV1 => "github.com/aws/aws-sdk-go",
            Self::GoV2 => "github.com/aws/aws-sdk-go-v2",
            Self::JavaV1 => "AWS SDK for Java (com.amazonaws:aws-java-sdk-core)",
            Self::JavaV2 => "AWS SDK for Java 2.x (software.amazon.awssdk)",
            Self::JsV2 => "aws-sdk (JavaScript v2)",
            Self::JsV3 => "@aws-sdk (JavaScript v3)",
            Self::Ruby => "aws-sdk-core (Ruby)",
            Self::Php => "aws/aws-sdk-php",
            Self::Dotnet => "AWSSDK.Core (.NET)",
            Self::Cpp => "aws-sdk-cpp",
            Self::Rust => "aws-config (Rust)",
            Self::Powershell => "AWS Tools for PowerShell",
            Self::CloudwatchAgent => "amazon-cloudwatch-agent",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sdk {
    pub name: SdkName,
    pub version: String,
}

/// Products in order of precedence: the first one present names the SDK.
const PRODUCTS: &[(&str, SdkName)] = &[
    ("AWSPowerShell.NetCore", SdkName::Powershell),
    ("AWSPowerShell", SdkName::Powershell),
    ("AWS.Tools", SdkName::Powershell),
    ("CWAgent", SdkName::CloudwatchAgent),
    ("aws-cli", SdkName::AwsCliV1),
    ("Boto3", SdkName::Boto3),
    ("Botocore", SdkName::Botocore),
    ("aws-sdk-go-v2", SdkName::GoV2),
    ("aws-sdk-go", SdkName::GoV1),
    ("aws-sdk-java", SdkName::JavaV1),
    ("aws-sdk-nodejs", SdkName::JsV2),
    ("aws-sdk-js", SdkName::JsV3),
    ("aws-sdk-core", SdkName::Ruby),
    ("aws-sdk-ruby3", SdkName::Ruby),
    ("aws-sdk-ruby2", SdkName::Ruby),
    ("aws-sdk-php", SdkName::Php),
    // The flavour's token carries the SDK's release (AWS's table lists 3.3.634.1), the core's
    // token only AWSSDK.Core's own number.
    ("aws-sdk-dotnet-coreclr", SdkName::Dotnet),
    ("aws-sdk-dotnet-45", SdkName::Dotnet),
    ("aws-sdk-dotnet-35", SdkName::Dotnet),
    ("aws-sdk-dotnet-core", SdkName::Dotnet),
    ("aws-sdk-cpp", SdkName::Cpp),
    ("aws-sdk-rust", SdkName::Rust),
];

/// The SDK a User-Agent names, or None for anything else (urllib3, curl, Go's http client...).
pub fn parse(user_agent: &str) -> Option<Sdk> {
    let tokens: Vec<(&str, &str)> = user_agent
        .split_whitespace()
        .filter_map(|token| token.split_once('/'))
        .map(|(product, version)| (product, version.split(['#', ';', ')']).next().unwrap_or("")))
        .filter(|(_, version)| version.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    PRODUCTS.iter().find_map(|&(product, name)| {
        let (_, version) = tokens
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(product))?;
        Some(Sdk {
            name: refine(name, version),
            version: (*version).to_owned(),
        })
    })
}

/// Products whose major version tells two SDKs apart.
fn refine(name: SdkName, version: &str) -> SdkName {
    let major = version.split('.').next().unwrap_or("");
    match (name, major) {
        (SdkName::AwsCliV1, "2") => SdkName::AwsCliV2,
        (SdkName::JavaV1, "2") => SdkName::JavaV2,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdk(user_agent: &str) -> Option<(SdkName, String)> {
        parse(user_agent).map(|sdk| (sdk.name, sdk.version))
    }

    fn is(name: SdkName, version: &str) -> Option<(SdkName, String)> {
        Some((name, version.to_owned()))
    }

    /// User-Agents as each SDK sends them (from their sources and from captured traffic).
    #[test]
    fn every_sdk_of_the_table() {
        let cases = [
            (
                "Botocore/1.13.24 Python/3.7.3 Linux/4.14.146-119.123.amzn2.x86_64",
                is(SdkName::Botocore, "1.13.24"),
            ),
            (
                "Botocore/1.34.2 ua/2.0 os/linux#6.1.0-18-cloud-amd64 md/arch#x86_64 lang/python#3.11.2 md/pyimpl#CPython cfg/retry-mode#legacy",
                is(SdkName::Botocore, "1.34.2"),
            ),
            (
                "Boto3/1.12.5 Python/3.8.0 Linux/4.14.165-133.209.amzn2.x86_64 Botocore/1.15.5",
                is(SdkName::Boto3, "1.12.5"),
            ),
            (
                "Boto3/1.34.2 md/Botocore#1.34.2 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.2 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.2",
                is(SdkName::Boto3, "1.34.2"),
            ),
            (
                "aws-cli/1.16.200 Python/2.7.16 Linux/4.14.133-113.105.amzn2.x86_64 botocore/1.12.190",
                is(SdkName::AwsCliV1, "1.16.200"),
            ),
            (
                "aws-cli/2.15.10 Python/3.11.6 Linux/6.1.0-18-cloud-amd64 exe/x86_64.debian.12 prompt/off command/sts.get-caller-identity",
                is(SdkName::AwsCliV2, "2.15.10"),
            ),
            (
                "aws-sdk-go/1.25.37 (go1.13.4; linux; amd64)",
                is(SdkName::GoV1, "1.25.37"),
            ),
            (
                "aws-sdk-go-v2/1.24.0 os/linux lang/go#1.21.5 md/GOOS#linux md/GOARCH#amd64 api/imds#1.14.10",
                is(SdkName::GoV2, "1.24.0"),
            ),
            (
                "aws-sdk-java/1.11.600 Linux/4.14.133 OpenJDK_64-Bit_Server_VM/25.222-b10 java/1.8.0_222 vendor/Oracle_Corporation",
                is(SdkName::JavaV1, "1.11.600"),
            ),
            (
                "aws-sdk-java/2.21.46 Linux/6.1.0-18-cloud-amd64 OpenJDK_64-Bit_Server_VM/17.0.9+9-Debian-1deb12u1 Java/17.0.9 vendor/Debian io/sync http/UrlConnection cfg/retry-mode/legacy",
                is(SdkName::JavaV2, "2.21.46"),
            ),
            (
                "aws-sdk-nodejs/2.1500.0 linux/v18.19.0 exec-env/AWS_ECS_EC2",
                is(SdkName::JsV2, "2.1500.0"),
            ),
            (
                "aws-sdk-js/3.478.0 ua/2.0 os/linux#6.1.0 lang/js md/nodejs#18.19.0 api/sts#3.478.0",
                is(SdkName::JsV3, "3.478.0"),
            ),
            (
                "aws-sdk-ruby3/3.190.0 ruby/3.1.2 x86_64-linux aws-sdk-core/3.190.0",
                is(SdkName::Ruby, "3.190.0"),
            ),
            (
                "aws-sdk-php/3.147.6 OS/Linux/4.14.177 GuzzleHttp/6.5.5 curl/7.61.1 PHP/7.4.5",
                is(SdkName::Php, "3.147.6"),
            ),
            (
                "aws-sdk-dotnet-coreclr/3.7.300.30 aws-sdk-dotnet-core/3.7.300.30 .NET_Core/6.0.25 OS/Linux_6.1.0 ClientAsync",
                is(SdkName::Dotnet, "3.7.300.30"),
            ),
            (
                "aws-sdk-dotnet-45/3.3.634.0 aws-sdk-dotnet-core/3.3.104.0 .NET_Runtime/4.0 .NET_Framework/4.0 OS/Microsoft_Windows_NT_10.0 ClientSync",
                is(SdkName::Dotnet, "3.3.634.0"),
            ),
            (
                "aws-sdk-cpp/1.7.228 Linux/4.14.173-137.229.amzn2.x86_64 x86_64 GCC/7.3.1",
                is(SdkName::Cpp, "1.7.228"),
            ),
            (
                "aws-sdk-rust/1.1.1 os/linux lang/rust/1.75.0",
                is(SdkName::Rust, "1.1.1"),
            ),
            (
                "aws-sdk-dotnet-coreclr/3.7.0.0 aws-sdk-dotnet-core/3.7.0.0 .NET_Core/3.1 OS/Linux AWSPowerShell.NetCore/4.0.0.0 ClientSync",
                is(SdkName::Powershell, "4.0.0.0"),
            ),
            (
                "CWAgent/1.300032.2b361 (go1.21.5; linux; amd64) aws-sdk-go/1.48.6 (go1.21.5; linux; amd64)",
                is(SdkName::CloudwatchAgent, "1.300032.2b361"),
            ),
        ];
        for (user_agent, want) in cases {
            assert_eq!(sdk(user_agent), want, "{user_agent}");
        }
    }

    #[test]
    fn other_clients_are_no_sdk() {
        for user_agent in [
            "python-urllib3/1.26.18",
            "curl/7.88.1",
            "Go-http-client/1.1",
            "Wget/1.21.3",
            "cloud-init/22.4.2",
            "aws-sdk-go/unknown",
            "",
        ] {
            assert_eq!(sdk(user_agent), None, "{user_agent}");
        }
    }
}
