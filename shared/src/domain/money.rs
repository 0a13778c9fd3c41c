//! Money in minor units (cents, won) with an ISO 4217 currency code.

use super::ValidationError;
use std::fmt;

/// An ISO 4217 alphabetic code: three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let b = raw.as_bytes();
        if b.len() != 3 || !b.iter().all(u8::is_ascii_uppercase) {
            return Err(ValidationError::new(
                "must be an ISO 4217 code of three upper-case letters, e.g. KRW",
            ));
        }
        Ok(Self([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Number of minor-unit digits (ISO 4217 exponent) for display.
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            "KRW" | "JPY" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
            _ => 2,
        }
    }

    /// Formats an amount of minor units for people: `KRW 12,300`, `USD 12.30`.
    pub fn format(&self, minor: i64) -> String {
        let exp = self.exponent();
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        let div = 10u64.pow(exp);
        let whole = group_thousands(abs / div);
        if exp == 0 {
            format!("{} {sign}{whole}", self.as_str())
        } else {
            format!(
                "{} {sign}{whole}.{:0width$}",
                self.as_str(),
                abs % div,
                width = exp as usize
            )
        }
    }
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bill item amount in minor units: non-negative and at most 10^15 so sums never overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinorAmount(i64);

impl MinorAmount {
    pub const MAX: i64 = 1_000_000_000_000_000;

    pub fn parse(raw: i64) -> Result<Self, ValidationError> {
        if raw < 0 {
            return Err(ValidationError::new("must not be negative"));
        }
        if raw > Self::MAX {
            return Err(ValidationError::new("must be at most 10^15 minor units"));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_codes_must_be_three_upper_case_letters() {
        assert_eq!(Currency::parse("KRW").unwrap().as_str(), "KRW");
        for bad in ["krw", "KR", "KRWW", "K1W", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_are_formatted_with_the_currency_exponent() {
        assert_eq!(
            Currency::parse("KRW").unwrap().format(1_234_500),
            "KRW 1,234,500"
        );
        assert_eq!(
            Currency::parse("USD").unwrap().format(123_456),
            "USD 1,234.56"
        );
        assert_eq!(Currency::parse("USD").unwrap().format(5), "USD 0.05");
        assert_eq!(Currency::parse("KWD").unwrap().format(1_500), "KWD 1.500");
    }

    #[test]
    fn amounts_are_bounded() {
        assert!(MinorAmount::parse(-1).is_err());
        assert!(MinorAmount::parse(MinorAmount::MAX + 1).is_err());
        assert_eq!(MinorAmount::parse(0).unwrap().get(), 0);
    }
}
