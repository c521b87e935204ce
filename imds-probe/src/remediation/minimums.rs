//! The first versions of each SDK that fetch an IMDSv2 token, from AWS's table ("Use a
//! supported AWS SDK", EC2 user guide), and a version comparison that reads them.

use std::cmp::Ordering;

use crate::remediation::user_agent::SdkName;

/// The first version that supports IMDSv2, or None where every version does (or AWS lists
/// none: the CloudWatch agent goes by the Go SDK inside it).
pub const fn minimum(name: SdkName) -> Option<&'static str> {
    match name {
        SdkName::AwsCliV1 => Some("1.16.289"),
        SdkName::Botocore => Some("1.13.25"),
        SdkName::Boto3 => Some("1.12.6"),
        SdkName::GoV1 => Some("1.25.38"),
        SdkName::GoV2 => Some("0.19.0"),
        SdkName::JavaV1 => Some("1.11.678"),
        SdkName::JavaV2 => Some("2.10.21"),
        SdkName::JsV2 => Some("2.722.0"),
        SdkName::Php => Some("3.147.7"),
        SdkName::Ruby => Some("3.79.0"),
        SdkName::Dotnet => Some("3.3.634.1"),
        SdkName::Cpp => Some("1.7.229"),
        SdkName::Powershell => Some("4.0.1.0"),
        SdkName::AwsCliV2 | SdkName::JsV3 | SdkName::Rust | SdkName::CloudwatchAgent => None,
    }
}

/// Whether `version` is older than `name`'s minimum; None when the version does not read as
/// numbers.
pub fn too_old(name: SdkName, version: &str) -> Option<bool> {
    let Some(minimum) = minimum(name) else {
        return Some(false);
    };
    Some(compare(version, minimum)? == Ordering::Less)
}

/// Compares dotted versions numerically, component by component; a missing component is 0,
/// and a component's non-digit tail (`2b361`, `0-beta`) is ignored.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let parts = |v: &str| -> Option<Vec<u64>> {
        v.split('.')
            .map(|part| {
                let digits = part
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(part.len());
                part[..digits].parse().ok()
            })
            .collect()
    };
    let (a, b) = (parts(a)?, parts(b)?);
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..len)
            .map(|i| at(&a, i).cmp(&at(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(compare("1.13.25", "1.13.25"), Some(Ordering::Equal));
        assert_eq!(compare("1.13.100", "1.13.25"), Some(Ordering::Greater));
        assert_eq!(compare("1.12.253", "1.13.25"), Some(Ordering::Less));
        assert_eq!(compare("2.722", "2.722.0"), Some(Ordering::Equal));
        assert_eq!(compare("3.3.634.0", "3.3.634.1"), Some(Ordering::Less));
        assert_eq!(compare("1.0.0-beta", "1.0.0"), Some(Ordering::Equal));
        assert_eq!(compare("x.y", "1.0"), None);
    }

    #[test]
    fn the_table_at_its_edges() {
        assert_eq!(too_old(SdkName::Botocore, "1.12.253"), Some(true));
        assert_eq!(too_old(SdkName::Botocore, "1.13.25"), Some(false));
        assert_eq!(too_old(SdkName::Boto3, "1.12.5"), Some(true));
        assert_eq!(too_old(SdkName::AwsCliV1, "1.16.289"), Some(false));
        assert_eq!(too_old(SdkName::GoV1, "1.25.37"), Some(true));
        assert_eq!(too_old(SdkName::JavaV2, "2.10.20"), Some(true));
        assert_eq!(too_old(SdkName::JsV2, "2.1500.0"), Some(false));
        assert_eq!(too_old(SdkName::AwsCliV2, "2.0.0"), Some(false));
        assert_eq!(too_old(SdkName::Rust, "0.1.0"), Some(false));
    }
}
