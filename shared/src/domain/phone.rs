//! Phone numbers normalised to E.164. Korean mobile numbers are accepted in their domestic
//! forms (`010-1234-5678`, `01012345678`) as well as `+82 10 1234 5678`.

use super::ValidationError;
use crate::mask::mask_phone;
use std::fmt;

/// A phone number in E.164 form (`+821012345678`).
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new("must not be empty"));
        }
        if let Some(bad) = trimmed
            .chars()
            .find(|c| !(c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')' | '.')))
        {
            let _ = bad;
            return Err(ValidationError::new(
                "may contain only digits, spaces, '+', '-', '.', '(' and ')'",
            ));
        }
        if trimmed.rfind('+').is_some_and(|i| i != 0) {
            return Err(ValidationError::new("'+' may only lead the number"));
        }
        let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
        let e164 = if trimmed.starts_with('+') {
            digits
        } else if let Some(rest) = digits.strip_prefix("00") {
            rest.to_owned()
        } else if digits.starts_with("01") {
            // Korean domestic mobile: 010/011/016/017/018/019 + 7 or 8 digits.
            korean_domestic_mobile(&digits)?
        } else {
            return Err(ValidationError::new(
                "must be in international form (+CC...) or a Korean mobile number (010-XXXX-XXXX)",
            ));
        };
        if e164.starts_with('0') {
            return Err(ValidationError::new("country code must not start with 0"));
        }
        if !(8..=15).contains(&e164.len()) {
            return Err(ValidationError::new(
                "must have 8 to 15 digits in E.164 form",
            ));
        }
        if let Some(national) = e164.strip_prefix("82") {
            if national.starts_with('1') {
                korean_domestic_mobile(&format!("0{national}"))?;
            }
        }
        Ok(Self(format!("+{e164}")))
    }

    /// The number in clear (E.164). Only the renderer and the provider client may call this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Validates a domestic Korean mobile number and returns it in E.164 without the `+`.
fn korean_domestic_mobile(digits: &str) -> Result<String, ValidationError> {
    let prefix_ok = matches!(
        &digits[..3.min(digits.len())],
        "010" | "011" | "016" | "017" | "018" | "019"
    );
    let len_ok = if digits.starts_with("010") {
        digits.len() == 11
    } else {
        digits.len() == 10 || digits.len() == 11
    };
    if !prefix_ok || !len_ok {
        return Err(ValidationError::new(
            "is not a valid Korean mobile number (010-XXXX-XXXX)",
        ));
    }
    Ok(format!("82{}", &digits[1..]))
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", mask_phone(&self.0))
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_phone(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_mobile_numbers_in_every_common_form_normalise_to_e164() {
        for raw in [
            "010-1234-5678",
            "01012345678",
            "+82 10 1234 5678",
            "+82-10-1234-5678",
            "0082 10 1234 5678",
        ] {
            assert_eq!(
                PhoneNumber::parse(raw).unwrap().expose(),
                "+821012345678",
                "{raw}"
            );
        }
        assert_eq!(
            PhoneNumber::parse("011-123-4567").unwrap().expose(),
            "+82111234567"
        );
    }

    #[test]
    fn international_numbers_are_accepted() {
        assert_eq!(
            PhoneNumber::parse("+1 (415) 555-0100").unwrap().expose(),
            "+14155550100"
        );
        assert_eq!(
            PhoneNumber::parse("+44 20 7946 0958").unwrap().expose(),
            "+442079460958"
        );
    }

    #[test]
    fn bad_numbers_are_rejected_with_a_reason() {
        for bad in [
            "",
            "abc",
            "010-123",
            "0101234567",
            "02-123-4567",
            "+0 123 456 789",
            "+1 2",
            "1+234567890",
            "+8210123",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_number() {
        let p = PhoneNumber::parse("010-9876-5432").unwrap();
        assert!(!format!("{p:?}").contains("98765432"));
    }
}
