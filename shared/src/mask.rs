//! Masking of personal data for API answers and rendered text.
//!
//! Each function reveals a fixed, small amount (the first letter of an e-mail's local part and
//! its domain; the last four digits of a phone number; the first letter of a name), hides the
//! length of what it hides where it can, and is idempotent: masking a masked value changes
//! nothing.

const STARS: &str = "***";

/// `jane.doe@example.com` -> `j***@example.com`.
pub fn mask_email(email: &str) -> String {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return STARS.to_owned();
    };
    let mut chars = local.chars();
    let first = chars.next();
    let reveal = match first {
        Some(c) if c != '*' && chars.next().is_some() => c.to_string(),
        _ => String::new(),
    };
    format!("{reveal}{STARS}@{domain}")
}

/// `+821012345678` -> `+********5678`: digits become `*` except the last four, which are
/// kept only when the number has at least eight digit positions.
pub fn mask_phone(phone: &str) -> String {
    let positions = phone
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '*')
        .count();
    let keep_from = if positions >= 8 {
        positions - 4
    } else {
        usize::MAX
    };
    let mut seen = 0;
    phone
        .chars()
        .map(|c| {
            if c.is_ascii_digit() || c == '*' {
                let i = seen;
                seen += 1;
                if i >= keep_from {
                    c
                } else {
                    '*'
                }
            } else if c.is_ascii_punctuation() || c == ' ' {
                c
            } else {
                '*'
            }
        })
        .collect()
}

/// `김민수` -> `김**`, `Jane Doe` -> `J*** ***`: the first letter stays when the name has at
/// least two letters; every other letter becomes `*`; spaces keep the name's shape.
pub fn mask_name(name: &str) -> String {
    let letters = name.chars().filter(|c| !c.is_whitespace()).count();
    let mut first = letters >= 2;
    name.chars()
        .map(|c| {
            if c.is_whitespace() {
                ' '
            } else if std::mem::take(&mut first) {
                c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("a@example.com"), "***@example.com");
        assert_eq!(mask_email("no-at"), "***");
        assert_eq!(mask_phone("+821012345678"), "+********5678");
        assert_eq!(mask_phone("+1234"), "+****");
        assert_eq!(mask_name("김민수"), "김**");
        assert_eq!(mask_name("Jane Doe"), "J*** ***");
        assert_eq!(mask_name("X"), "*");
    }

    fn revealed(masked: &str) -> usize {
        masked.chars().filter(|c| *c != '*').count()
    }

    proptest! {
        #[test]
        fn email_masking_reveals_at_most_one_local_character_and_is_idempotent(
            local in "[a-zA-Z0-9._%+*-]{1,30}", domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}"
        ) {
            let email = format!("{local}@{domain}");
            let m = mask_email(&email);
            let (m_local, m_domain) = m.rsplit_once('@').unwrap();
            prop_assert_eq!(m_domain, domain.as_str());
            prop_assert!(revealed(m_local) <= 1);
            let shown: String = m_local.chars().filter(|c| *c != '*').collect();
            prop_assert!(shown.is_empty() || local.starts_with(&shown), "reveals only the first character");
            prop_assert_eq!(mask_email(&m), m.clone());
        }

        #[test]
        fn phone_masking_reveals_at_most_four_digits_and_is_idempotent(phone in "\\+?[0-9 ()-]{0,20}") {
            let m = mask_phone(&phone);
            prop_assert!(m.chars().filter(char::is_ascii_digit).count() <= 4);
            prop_assert_eq!(m.chars().count(), phone.chars().count());
            prop_assert_eq!(mask_phone(&m), m.clone());
        }

        #[test]
        fn name_masking_reveals_at_most_one_letter_and_is_idempotent(name in "\\PC{0,40}") {
            let m = mask_name(&name);
            let shown = m.chars().filter(|c| *c != '*' && !c.is_whitespace()).count();
            prop_assert!(shown <= 1);
            prop_assert_eq!(mask_name(&m), m.clone());
        }
    }
}
