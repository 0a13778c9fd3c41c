//! E-mail addresses: a pragmatic subset of RFC 5321 that real providers accept.

use super::ValidationError;
use crate::mask::mask_email;
use std::fmt;

/// A syntactically valid e-mail address, lower-cased in its domain part.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ValidationError::new("must not be empty"));
        }
        if s.len() > 254 {
            return Err(ValidationError::new("must be at most 254 characters"));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(ValidationError::new("must contain '@'"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(ValidationError::new(
                "local part must be 1 to 64 characters",
            ));
        }
        let local_ok = local.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
        });
        if !local_ok || local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(ValidationError::new("local part has invalid characters"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(ValidationError::new("domain must contain a dot"));
        }
        for label in &labels {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-');
            if !ok {
                return Err(ValidationError::new("domain is not a valid host name"));
            }
        }
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }

    /// The address in clear. Only the renderer and the provider client may call this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", mask_email(&self.0))
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_email(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_lowercases_the_domain() {
        let e = EmailAddress::parse(" Kim.Minsu+bill@Example.CO.KR ").unwrap();
        assert_eq!(e.expose(), "Kim.Minsu+bill@example.co.kr");
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for bad in [
            "",
            "no-at-sign",
            "@example.com",
            "a@b",
            "a..b@example.com",
            "a@-x.com",
            "a b@x.com",
        ] {
            let err = EmailAddress::parse(bad).unwrap_err();
            assert!(!err.0.is_empty(), "{bad}");
        }
    }

    #[test]
    fn debug_and_display_never_show_the_address() {
        let e = EmailAddress::parse("jane.doe@example.com").unwrap();
        assert!(!format!("{e:?}").contains("jane.doe"));
        assert!(!format!("{e}").contains("jane.doe"));
    }
}
