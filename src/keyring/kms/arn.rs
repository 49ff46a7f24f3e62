//! KMS key identifiers as users write them, and how a stored master key ARN is
//! matched against a configured key.
//!
//! Users configure keys as key ids (`1234abcd-...`, `mrk-...`), key ARNs,
//! alias names (`alias/app`) or alias ARNs. Wrapped blobs record the *key ARN*
//! KMS reported when it wrapped them. Matching rules:
//!
//! - two key ARNs match when partition, account and key id are equal and either
//!   the region is equal too, or the key id is a multi-region key (`mrk-`): a
//!   blob wrapped under `arn:aws:kms:us-east-1:111:key/mrk-X` is opened through
//!   the replica `arn:aws:kms:eu-west-1:111:key/mrk-X`;
//! - a bare key id matches a key ARN with that key id;
//! - an alias can only be matched after it was resolved (DescribeKey).

/// The parts of a KMS ARN (`arn:<partition>:kms:<region>:<account>:<type>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsArn<'a> {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: &'a str,
    /// The region, e.g. `eu-west-1`.
    pub region: &'a str,
    /// The 12-digit account id.
    pub account: &'a str,
    /// Whether the resource is an alias (`alias/...`) rather than a key (`key/...`).
    pub is_alias: bool,
    /// The key id (`mrk-...` or a UUID) or the alias name without `alias/`.
    pub resource: &'a str,
}

impl<'a> KmsArn<'a> {
    /// Parse a KMS key or alias ARN. `None` for anything else.
    pub fn parse(s: &'a str) -> Option<Self> {
        let mut parts = s.splitn(6, ':');
        let (arn, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if arn != "arn" || service != "kms" || partition.is_empty() || region.is_empty() {
            return None;
        }
        let (is_alias, resource) = if let Some(id) = resource.strip_prefix("key/") {
            (false, id)
        } else if let Some(name) = resource.strip_prefix("alias/") {
            (true, name)
        } else {
            return None;
        };
        if resource.is_empty() {
            return None;
        }
        Some(KmsArn {
            partition,
            region,
            account,
            is_alias,
            resource,
        })
    }

    /// Whether this is a multi-region key (`key/mrk-...`).
    pub fn is_multi_region(&self) -> bool {
        !self.is_alias && is_mrk_id(self.resource)
    }
}

/// Whether a bare key id names a multi-region key.
pub fn is_mrk_id(id: &str) -> bool {
    id.starts_with("mrk-")
}

/// How a user configured a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// A key ARN: usable as is.
    KeyArn,
    /// A bare key id (`1234abcd-...` or `mrk-...`).
    KeyId,
    /// An alias name (`alias/app`) or alias ARN.
    Alias,
}

impl KeySpec {
    /// Classify a key identifier as written in configuration.
    pub fn of(configured: &str) -> KeySpec {
        match KmsArn::parse(configured) {
            Some(a) if !a.is_alias => KeySpec::KeyArn,
            Some(_) => KeySpec::Alias,
            None if configured.starts_with("alias/") => KeySpec::Alias,
            None => KeySpec::KeyId,
        }
    }
}

/// Whether a blob wrapped under the key ARN `stored` can be decrypted through
/// the key ARN `local` (the same key, or a replica of the same multi-region key).
pub fn key_arns_match(local: &str, stored: &str) -> bool {
    if local == stored {
        return true;
    }
    let (Some(l), Some(s)) = (KmsArn::parse(local), KmsArn::parse(stored)) else {
        return false;
    };
    if l.is_alias || s.is_alias {
        return false;
    }
    l.partition == s.partition
        && l.account == s.account
        && l.resource == s.resource
        && (l.region == s.region || l.is_multi_region())
}

/// Whether a key configured as `configured` (not yet resolved to an ARN) may
/// unwrap a blob stored under `stored`. Exact for key ARNs and key ids;
/// optimistic for aliases (any key ARN in the alias's partition and account may
/// be the alias's target), which the keyring refines once the alias resolves.
pub fn configured_may_match(configured: &str, stored: &str) -> bool {
    match KeySpec::of(configured) {
        KeySpec::KeyArn => key_arns_match(configured, stored),
        KeySpec::KeyId => {
            KmsArn::parse(stored).is_some_and(|s| !s.is_alias && s.resource == configured)
                || configured == stored
        }
        KeySpec::Alias => {
            if configured == stored {
                return true;
            }
            let Some(s) = KmsArn::parse(stored).filter(|s| !s.is_alias) else {
                return false;
            };
            match KmsArn::parse(configured) {
                Some(c) => c.partition == s.partition && c.account == s.account,
                None => true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US_MRK: &str =
        "arn:aws:kms:us-east-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
    const EU_MRK: &str =
        "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
    const US_KEY: &str =
        "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    const EU_KEY: &str =
        "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    #[test]
    fn parses_key_and_alias_arns() {
        let a = KmsArn::parse(US_MRK).unwrap();
        assert_eq!(
            (a.partition, a.region, a.account, a.is_alias),
            ("aws", "us-east-1", "111122223333", false)
        );
        assert!(a.is_multi_region());
        let b = KmsArn::parse("arn:aws-cn:kms:cn-north-1:111122223333:alias/app").unwrap();
        assert!(b.is_alias && b.resource == "app" && b.partition == "aws-cn");
        assert!(!b.is_multi_region());
        for bad in [
            "",
            "alias/app",
            "mrk-1",
            "arn:aws:s3:::bucket",
            "arn:aws:kms:us-east-1:111122223333:key/",
            "arn:aws:kms:us-east-1:111122223333:grant/x",
            "arn:aws:kms::111122223333:key/x",
        ] {
            assert!(KmsArn::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn classifies_configured_keys() {
        assert_eq!(KeySpec::of(US_KEY), KeySpec::KeyArn);
        assert_eq!(
            KeySpec::of("1234abcd-12ab-34cd-56ef-1234567890ab"),
            KeySpec::KeyId
        );
        assert_eq!(KeySpec::of("mrk-1234"), KeySpec::KeyId);
        assert_eq!(KeySpec::of("alias/app"), KeySpec::Alias);
        assert_eq!(
            KeySpec::of("arn:aws:kms:us-east-1:111122223333:alias/app"),
            KeySpec::Alias
        );
    }

    #[test]
    fn multi_region_replicas_match_across_regions() {
        assert!(key_arns_match(EU_MRK, US_MRK));
        assert!(key_arns_match(US_MRK, EU_MRK));
        assert!(key_arns_match(US_MRK, US_MRK));
    }

    #[test]
    fn single_region_keys_match_only_in_their_region() {
        assert!(key_arns_match(US_KEY, US_KEY));
        assert!(!key_arns_match(EU_KEY, US_KEY));
        assert!(!key_arns_match(US_KEY, EU_KEY));
    }

    #[test]
    fn different_account_partition_or_key_never_match() {
        let other_account = EU_MRK.replace("111122223333", "999999999999");
        assert!(!key_arns_match(&other_account, US_MRK));
        let other_partition = EU_MRK.replace("arn:aws:", "arn:aws-cn:");
        assert!(!key_arns_match(&other_partition, US_MRK));
        let other_key = EU_MRK.replace("mrk-1234", "mrk-9999");
        assert!(!key_arns_match(&other_key, US_MRK));
        assert!(!key_arns_match(US_KEY, US_MRK));
        // An alias ARN is never the key itself.
        assert!(!key_arns_match(
            "arn:aws:kms:us-east-1:111122223333:alias/app",
            US_KEY
        ));
        assert!(!key_arns_match("local:app/1", US_KEY));
    }

    #[test]
    fn unresolved_configurations_match_sensibly() {
        assert!(configured_may_match(
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            US_MRK
        ));
        assert!(configured_may_match(
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            EU_MRK
        ));
        assert!(configured_may_match(
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            US_KEY
        ));
        assert!(!configured_may_match("mrk-other", US_MRK));
        assert!(!configured_may_match(
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "local:app/1"
        ));
        // Aliases: optimistic within their account, never for local keys.
        assert!(configured_may_match("alias/app", US_KEY));
        assert!(!configured_may_match("alias/app", "local:app/1"));
        assert!(configured_may_match(
            "arn:aws:kms:eu-west-1:111122223333:alias/app",
            US_KEY
        ));
        assert!(!configured_may_match(
            "arn:aws:kms:eu-west-1:999999999999:alias/app",
            US_KEY
        ));
        assert!(configured_may_match(EU_MRK, US_MRK));
        assert!(!configured_may_match(EU_KEY, US_KEY));
    }
}
