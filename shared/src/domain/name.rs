//! Recipient names: free text (any script), trimmed, bounded, without control characters.

use super::ValidationError;
use crate::mask::mask_name;
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(ValidationError::new("must not be empty"));
        }
        if s.chars().count() > 200 {
            return Err(ValidationError::new("must be at most 200 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(ValidationError::new("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({})", mask_name(&self.0))
    }
}

impl fmt::Display for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_name(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_any_script_are_accepted_and_trimmed() {
        assert_eq!(PersonName::parse(" 김민수 ").unwrap().expose(), "김민수");
        assert_eq!(
            PersonName::parse("Zoë O'Neil").unwrap().expose(),
            "Zoë O'Neil"
        );
    }

    #[test]
    fn empty_long_or_control_names_are_rejected() {
        assert!(PersonName::parse("  ").is_err());
        assert!(PersonName::parse(&"a".repeat(201)).is_err());
        assert!(PersonName::parse("a\u{0}b").is_err());
    }
}
