//! The ECR model's constraint checks and their wording: the rules behind the types of
//! src/domain/model.rs, and the presence and length checks the protocol applies to members.
//!
//! Each check returns the modelled `InvalidParameterException` message on failure.

use super::error::EcrError;

/// `Invalid parameter at '<member>' failed to satisfy constraint: '<rule>'`.
pub fn invalid(member: &str, rule: impl std::fmt::Display) -> EcrError {
    EcrError::InvalidParameter(format!(
        "Invalid parameter at '{member}' failed to satisfy constraint: '{rule}'"
    ))
}

pub fn required<T>(member: &str, value: Option<T>) -> Result<T, EcrError> {
    value.ok_or_else(|| invalid(member, "must not be null"))
}

pub fn check_len(member: &str, len: usize, min: usize, max: usize) -> Result<(), EcrError> {
    if len < min {
        return Err(invalid(
            member,
            format_args!("must have length greater than or equal to {min}"),
        ));
    }
    if len > max {
        return Err(invalid(
            member,
            format_args!("must have length less than or equal to {max}"),
        ));
    }
    Ok(())
}

/// `[0-9]{12}`.
///
/// good: `123456789012`; bad: `12345678901`, `1234567890123`, `12345678901a`, ``
pub fn registry_id(member: &str, s: &str) -> Result<(), EcrError> {
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(
            member,
            "must satisfy regular expression pattern: [0-9]{12}",
        ))
    }
}

pub const REPOSITORY_NAME_PATTERN: &str =
    r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*";

/// The current model's pattern
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, length 2..256.
///
/// good: `ab`, `a/b`, `project-a/nginx-web-app`, `a__b`, `a---b`, `a.b_c-d/e`
/// bad: `a`, `A`, `-a`, `a-`, `a//b`, `/a`, `a/`, `a___b`, `a._b`, `a b`, `a..b`
pub fn repository_name(member: &str, s: &str) -> Result<(), EcrError> {
    check_len(member, s.len(), 2, 256)?;
    if is_repository_name(s) {
        Ok(())
    } else {
        Err(invalid(
            member,
            format_args!("must satisfy regular expression pattern: {REPOSITORY_NAME_PATTERN}"),
        ))
    }
}

fn is_repository_name(s: &str) -> bool {
    s.split('/').all(|component| {
        // component: [a-z0-9]+ ( (\.|_|__|-+) [a-z0-9]+ )*
        let b = component.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut i = 0;
        loop {
            let start = i;
            while i < b.len() && alnum(b[i]) {
                i += 1;
            }
            if i == start {
                return false;
            }
            if i == b.len() {
                return true;
            }
            let sep = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            match &b[sep..i] {
                b"." | b"_" | b"__" => {}
                s if s.iter().all(|&c| c == b'-') => {}
                _ => return false,
            }
        }
    })
}

pub const UPLOAD_ID_PATTERN: &str =
    "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";

/// good: `3f2504e0-4f89-11d3-9a0c-0305e82c3301`, upper case too; bad: `3f2504e0`, `g...`
pub fn upload_id(member: &str, s: &str) -> Result<(), EcrError> {
    let groups: Vec<&str> = s.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            member,
            format_args!("must satisfy regular expression pattern: {UPLOAD_ID_PATTERN}"),
        ))
    }
}

pub const LAYER_DIGEST_PATTERN: &str = "[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+";

/// `[a-zA-Z0-9-_+.]+:[a-fA-F0-9]+`.
///
/// good: `sha256:ab12`, `sha512:FF`, `a.b+c_d-e:0`; bad: `sha256:`, `:ab`, `sha256:xyz`, `sha256`
pub fn is_layer_digest(s: &str) -> bool {
    let Some((alg, hex)) = s.split_once(':') else {
        return false;
    };
    !alg.is_empty()
        && alg
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_+.".contains(&c))
        && !hex.is_empty()
        && hex.bytes().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_current_model() {
        for good in [
            "ab",
            "a/b",
            "project-a/nginx-web-app",
            "a__b",
            "a---b",
            "a.b_c-d/e",
            "0a",
        ] {
            assert!(repository_name("repositoryName", good).is_ok(), "{good}");
        }
        for bad in [
            "a", "A1", "-a", "a-", "a//b", "/ab", "ab/", "a___b", "a._b", "a b", "a..b", "a_-b",
        ] {
            assert!(repository_name("repositoryName", bad).is_err(), "{bad}");
        }
        let long = "a".repeat(257);
        let err = repository_name("repositoryName", &long).unwrap_err();
        assert_eq!(
            err.message(),
            "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must have length less than or equal to 256'"
        );
    }

    #[test]
    fn short_repository_name_message_is_ecrs() {
        let err = repository_name("repositoryName", "a").unwrap_err();
        assert_eq!(
            err.message(),
            "Invalid parameter at 'repositoryName' failed to satisfy constraint: 'must have length greater than or equal to 2'"
        );
    }

    #[test]
    fn upload_ids_and_digests() {
        assert!(upload_id("uploadId", "3f2504e0-4f89-11d3-9a0c-0305e82c3301").is_ok());
        assert!(upload_id("uploadId", "3F2504E0-4F89-11D3-9A0C-0305E82C3301").is_ok());
        for bad in ["", "3f2504e0", "3f2504e0-4f89-11d3-9a0c-0305e82c330", "g f"] {
            assert!(upload_id("uploadId", bad).is_err(), "{bad}");
        }
        for good in ["sha256:ab12", "sha512:FF", "a.b+c_d-e:0"] {
            assert!(is_layer_digest(good), "{good}");
        }
        for bad in ["sha256:", ":ab", "sha256:xyz", "sha256", ""] {
            assert!(!is_layer_digest(bad), "{bad}");
        }
        assert!(registry_id("registryId", "123456789012").is_ok());
        assert!(registry_id("registryId", "12345678901").is_err());
    }
}
