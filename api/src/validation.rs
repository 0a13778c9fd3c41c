//! Parsing a bill from untyped JSON into domain values, collecting EVERY problem with its path
//! (`recipient.email`, `items[2].amount`, `bills[7].recipient.phone`) instead of stopping at the
//! first. Messages say what is expected and never echo the rejected value, which may be
//! personal data.

use crate::error::FieldError;
use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use shared::domain::{Currency, EmailAddress, MinorAmount, PersonName, PhoneNumber};

pub const MAX_ITEMS: usize = 100;
pub const MAX_ITEM_NAME_CHARS: usize = 200;
pub const MAX_EXTERNAL_ID_CHARS: usize = 200;

/// One step of a path: an object key or an array index.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Where a value sits in the request. A chain of borrowed steps, so building one costs nothing;
/// the dotted path and JSON Pointer are only rendered when an error is reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Option<Seg<'a>>,
    /// The batch item this location belongs to.
    index: Option<usize>,
}

static BILLS: Loc<'static> = Loc {
    parent: None,
    seg: Some(Seg::Key("bills")),
    index: None,
};

impl<'a> Loc<'a> {
    /// The root of a single-bill request.
    pub fn root() -> Self {
        Self::default()
    }

    /// The root of batch item `index` (`bills[index]`).
    pub fn batch_item(index: usize) -> Loc<'static> {
        Loc {
            parent: Some(&BILLS),
            seg: Some(Seg::Index(index)),
            index: Some(index),
        }
    }

    pub fn key<'b>(&'b self, key: &'b str) -> Loc<'b> {
        Loc {
            parent: Some(self),
            seg: Some(Seg::Key(key)),
            index: self.index,
        }
    }

    pub fn at<'b>(&'b self, i: usize) -> Loc<'b> {
        Loc {
            parent: Some(self),
            seg: Some(Seg::Index(i)),
            index: self.index,
        }
    }

    fn segments(&self) -> Vec<Seg<'a>> {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(loc) = cur {
            segs.extend(loc.seg);
            cur = loc.parent;
        }
        segs.reverse();
        segs
    }

    pub fn error(&self, message: impl Into<String>) -> FieldError {
        let mut field = String::new();
        let mut pointer = String::new();
        for seg in self.segments() {
            match seg {
                Seg::Key(k) => {
                    if !field.is_empty() {
                        field.push('.');
                    }
                    field.push_str(k);
                    pointer.push('/');
                    pointer.push_str(&k.replace('~', "~0").replace('/', "~1"));
                }
                Seg::Index(i) => {
                    field.push_str(&format!("[{i}]"));
                    pointer.push_str(&format!("/{i}"));
                }
            }
        }
        FieldError {
            field,
            pointer,
            index: self.index,
            message: message.into(),
        }
    }
}

/// One bill item, validated.
#[derive(Debug, Clone, Serialize)]
pub struct ValidItem {
    pub name: String,
    pub amount: i64,
}

/// A bill request whose every field parsed.
#[derive(Debug, Clone)]
pub struct ValidBill {
    pub name: PersonName,
    pub email: EmailAddress,
    pub phone: PhoneNumber,
    pub billing_period: String,
    pub due_date: NaiveDate,
    pub currency: Currency,
    pub items: Vec<ValidItem>,
    pub external_id: Option<String>,
}

/// The canonical form hashed for idempotency: normalised values in a fixed field order, so the
/// same bill sent with other key order, whitespace or phone formatting hashes the same.
#[derive(Serialize)]
struct Canonical<'a> {
    name: &'a str,
    email: &'a str,
    phone: &'a str,
    billing_period: &'a str,
    due_date: NaiveDate,
    currency: &'a str,
    items: &'a [ValidItem],
    external_id: Option<&'a str>,
}

impl ValidBill {
    pub fn total(&self) -> i64 {
        self.items.iter().map(|i| i.amount).sum()
    }

    /// SHA-256 of the canonical request.
    pub fn request_hash(&self) -> Vec<u8> {
        let canonical = Canonical {
            name: self.name.expose(),
            email: self.email.expose(),
            phone: self.phone.expose(),
            billing_period: &self.billing_period,
            due_date: self.due_date,
            currency: self.currency.as_str(),
            items: &self.items,
            external_id: self.external_id.as_deref(),
        };
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        Sha256::digest(&bytes).to_vec()
    }
}

const BILL_FIELDS: &[&str] = &[
    "recipient",
    "billing_period",
    "due_date",
    "currency",
    "items",
    "external_id",
];
const RECIPIENT_FIELDS: &[&str] = &["name", "email", "phone"];
const ITEM_FIELDS: &[&str] = &["name", "amount"];

/// Parses one bill at `loc`, pushing every problem to `errors`.
pub fn parse_bill(value: &Value, loc: &Loc, errors: &mut Vec<FieldError>) -> Option<ValidBill> {
    let before = errors.len();
    let Some(obj) = value.as_object() else {
        errors.push(loc.error("must be a JSON object"));
        return None;
    };
    unknown_fields(obj, BILL_FIELDS, loc, errors);

    let rloc = loc.key("recipient");
    let (mut name, mut email, mut phone) = (None, None, None);
    match obj.get("recipient") {
        None | Some(Value::Null) => errors.push(rloc.error("is required")),
        Some(Value::Object(r)) => {
            unknown_fields(r, RECIPIENT_FIELDS, &rloc, errors);
            name = string_field(r, "name", &rloc, errors)
                .and_then(|s| domain(PersonName::parse(s), &rloc.key("name"), errors));
            email = string_field(r, "email", &rloc, errors)
                .and_then(|s| domain(EmailAddress::parse(s), &rloc.key("email"), errors));
            phone = string_field(r, "phone", &rloc, errors)
                .and_then(|s| domain(PhoneNumber::parse(s), &rloc.key("phone"), errors));
        }
        Some(_) => errors.push(rloc.error("must be an object with name, email and phone")),
    }

    let billing_period = string_field(obj, "billing_period", loc, errors).and_then(|s| {
        let ok = billing_period_ok(s);
        if !ok {
            errors.push(
                loc.key("billing_period")
                    .error("must be a month as YYYY-MM, e.g. 2026-11"),
            );
        }
        ok.then(|| s.to_owned())
    });
    let due_date = string_field(obj, "due_date", loc, errors).and_then(|s| {
        let parsed = (s.len() == 10)
            .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .flatten();
        if parsed.is_none() {
            errors.push(
                loc.key("due_date")
                    .error("must be a date as YYYY-MM-DD, e.g. 2026-12-10"),
            );
        }
        parsed
    });
    let currency = string_field(obj, "currency", loc, errors)
        .and_then(|s| domain(Currency::parse(s), &loc.key("currency"), errors));

    let iloc = loc.key("items");
    let mut items = Vec::new();
    match obj.get("items") {
        None | Some(Value::Null) => errors.push(iloc.error("is required")),
        Some(Value::Array(list)) => {
            if list.is_empty() || list.len() > MAX_ITEMS {
                errors.push(iloc.error(format!("must hold 1 to {MAX_ITEMS} items")));
            }
            for (i, item) in list.iter().take(MAX_ITEMS).enumerate() {
                if let Some(item) = parse_item(item, &iloc.at(i), errors) {
                    items.push(item);
                }
            }
        }
        Some(_) => errors.push(iloc.error("must be an array of items")),
    }

    let eloc = loc.key("external_id");
    let external_id = match obj.get("external_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n == 0 || n > MAX_EXTERNAL_ID_CHARS || s.chars().any(char::is_control) {
                errors.push(eloc.error(format!(
                    "must be 1 to {MAX_EXTERNAL_ID_CHARS} characters without control characters"
                )));
            }
            Some(s.clone())
        }
        Some(_) => {
            errors.push(eloc.error("must be a string"));
            None
        }
    };

    if errors.len() > before {
        return None;
    }
    Some(ValidBill {
        name: name?,
        email: email?,
        phone: phone?,
        billing_period: billing_period?,
        due_date: due_date?,
        currency: currency?,
        items,
        external_id,
    })
}

fn parse_item(value: &Value, loc: &Loc, errors: &mut Vec<FieldError>) -> Option<ValidItem> {
    let Some(obj) = value.as_object() else {
        errors.push(loc.error("must be an object with name and amount"));
        return None;
    };
    unknown_fields(obj, ITEM_FIELDS, loc, errors);
    let name = string_field(obj, "name", loc, errors).and_then(|s| {
        let trimmed = s.trim();
        let n = trimmed.chars().count();
        if n == 0 || n > MAX_ITEM_NAME_CHARS || trimmed.chars().any(char::is_control) {
            errors.push(loc.key("name").error(format!(
                "must be 1 to {MAX_ITEM_NAME_CHARS} characters without control characters"
            )));
            return None;
        }
        Some(trimmed.to_owned())
    });
    let aloc = loc.key("amount");
    let amount = match obj.get("amount") {
        None | Some(Value::Null) => {
            errors.push(aloc.error("is required"));
            None
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => domain(MinorAmount::parse(v), &aloc, errors).map(MinorAmount::get),
            None if n.is_u64() => {
                errors.push(aloc.error("must be at most 10^15 minor units"));
                None
            }
            None => {
                errors.push(aloc.error("must be an integer number of minor units"));
                None
            }
        },
        Some(_) => {
            errors.push(aloc.error("must be an integer number of minor units"));
            None
        }
    };
    Some(ValidItem {
        name: name?,
        amount: amount?,
    })
}

/// A required string field; records "is required" or "must be a string".
fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    loc: &Loc,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            errors.push(loc.key(key).error("is required"));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.push(loc.key(key).error("must be a string"));
            None
        }
    }
}

fn domain<T>(
    parsed: Result<T, shared::domain::ValidationError>,
    loc: &Loc<'_>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    parsed.map_err(|e| errors.push(loc.error(e.0))).ok()
}

fn unknown_fields(
    obj: &Map<String, Value>,
    known: &[&str],
    loc: &Loc,
    errors: &mut Vec<FieldError>,
) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        // The key is the caller's own field name, not a value: safe to echo, but bounded.
        let shown: String = key.chars().take(64).collect();
        errors.push(loc.key(&shown).error("is not a known field"));
    }
}

fn billing_period_ok(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..].iter().all(u8::is_ascii_digit)
        && matches!(s[5..].parse::<u32>(), Ok(1..=12))
        && s[..4].parse::<u32>().is_ok_and(|y| y >= 1970)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "recipient": {"name": "Kim Minsu", "email": "kim@example.com", "phone": "010-1234-5678"},
            "billing_period": "2026-11",
            "due_date": "2026-12-10",
            "currency": "KRW",
            "items": [{"name": "Mobile plan", "amount": 55000}, {"name": "Roaming", "amount": 12000}]
        })
    }

    #[test]
    fn a_valid_bill_parses_and_totals_its_items() {
        let mut errors = vec![];
        let bill = parse_bill(&valid(), &Loc::root(), &mut errors).unwrap();
        assert!(errors.is_empty());
        assert_eq!(bill.total(), 67000);
        assert_eq!(bill.phone.expose(), "+821012345678");
    }

    #[test]
    fn every_bad_field_is_reported_with_its_path_and_without_its_value() {
        let body = json!({
            "recipient": {"name": "", "email": "secret-at-example.com", "phone": 7},
            "billing_period": "2026-13",
            "due_date": "10/12/2026",
            "currency": "krw",
            "items": [{"name": "ok", "amount": 1}, {"name": "x", "amount": 1.5}, {"amount": -1}],
            "external_id": 5,
            "surprise": true
        });
        let mut errors = vec![];
        assert!(parse_bill(&body, &Loc::batch_item(7), &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "bills[7].recipient.name",
            "bills[7].recipient.email",
            "bills[7].recipient.phone",
            "bills[7].billing_period",
            "bills[7].due_date",
            "bills[7].currency",
            "bills[7].items[1].amount",
            "bills[7].items[2].name",
            "bills[7].items[2].amount",
            "bills[7].external_id",
            "bills[7].surprise",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        assert!(errors.iter().all(|e| e.index == Some(7)));
        assert!(errors
            .iter()
            .any(|e| e.pointer == "/bills/7/items/1/amount"));
        assert!(!serde_json::to_string(&errors).unwrap().contains("secret"));
    }

    #[test]
    fn the_request_hash_ignores_formatting_but_not_content() {
        let mut errors = vec![];
        let a = parse_bill(&valid(), &Loc::root(), &mut errors).unwrap();
        let mut other_phone_format = valid();
        other_phone_format["recipient"]["phone"] = json!("+82 10 1234 5678");
        let b = parse_bill(&other_phone_format, &Loc::root(), &mut errors).unwrap();
        assert_eq!(a.request_hash(), b.request_hash());
        let mut other_amount = valid();
        other_amount["items"][0]["amount"] = json!(55001);
        let c = parse_bill(&other_amount, &Loc::root(), &mut errors).unwrap();
        assert_ne!(a.request_hash(), c.request_hash());
    }
}
