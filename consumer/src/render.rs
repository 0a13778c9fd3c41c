//! Rendering bills with minijinja templates: an HTML email with a subject and a plain-text
//! part, and a short SMS text. Built-in templates are compiled in; a file of the same name in
//! `TEMPLATE_DIR` overrides one. Templates see only masked personal data (`name`, `email`,
//! `phone`); the clear address is used for the send itself and never reaches a template.

use crate::claim::Item;
use anyhow::Context;
use chrono::NaiveDate;
use minijinja::{context, AutoEscape, Environment};
use serde::Serialize;
use shared::domain::Currency;
use shared::mask::{mask_email, mask_name, mask_phone};
use std::path::Path;
use uuid::Uuid;

/// Template names (also the file names an operator can override).
pub const TEMPLATES: [(&str, &str); 4] = [
    (
        "email.subject.txt",
        include_str!("../templates/email.subject.txt"),
    ),
    ("email.html", include_str!("../templates/email.html")),
    ("email.txt", include_str!("../templates/email.txt")),
    ("sms.txt", include_str!("../templates/sms.txt")),
];

/// Everything a template may show about a bill. Recipient data is already decrypted here;
/// only masked forms are passed to templates.
#[derive(Debug, Clone)]
pub struct BillView<'a> {
    pub bill_id: Uuid,
    pub name: &'a str,
    pub email: &'a str,
    pub phone: &'a str,
    pub billing_period: &'a str,
    pub due_date: NaiveDate,
    pub currency: &'a str,
    pub total_minor: i64,
    pub items: &'a [Item],
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub html: String,
    pub text: String,
}

#[derive(Serialize)]
struct ItemView {
    name: String,
    amount: String,
}

/// The compiled templates.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// The built-in templates, overridden by files in `dir` when given. Fails at start on a
    /// template that does not compile, naming the file.
    pub fn new(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        // Escape HTML in .html templates only; text parts and SMS stay verbatim.
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, builtin) in TEMPLATES {
            let source = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
                Some(path) => std::fs::read_to_string(&path)
                    .with_context(|| format!("failed to read template {}", path.display()))?,
                None => builtin.to_owned(),
            };
            env.add_template_owned(name, source)
                .with_context(|| format!("template {name} does not compile"))?;
        }
        Ok(Self { env })
    }

    fn render(&self, name: &str, bill: &BillView<'_>) -> Result<String, minijinja::Error> {
        let currency = Currency::parse(bill.currency).ok();
        let money = |minor: i64| match currency {
            Some(c) => c.format(minor),
            None => format!("{} {minor}", bill.currency),
        };
        let items: Vec<ItemView> = bill
            .items
            .iter()
            .map(|i| ItemView {
                name: i.name.clone(),
                amount: money(i.amount_minor),
            })
            .collect();
        self.env.get_template(name)?.render(context! {
            bill_id => bill.bill_id.to_string(),
            name => mask_name(bill.name),
            email => mask_email(bill.email),
            phone => mask_phone(bill.phone),
            billing_period => bill.billing_period,
            due_date => bill.due_date.to_string(),
            currency => bill.currency,
            total => money(bill.total_minor),
            items => items,
        })
    }

    pub fn email(&self, bill: &BillView<'_>) -> Result<RenderedEmail, minijinja::Error> {
        Ok(RenderedEmail {
            subject: self.render("email.subject.txt", bill)?.trim().to_owned(),
            html: self.render("email.html", bill)?,
            text: self.render("email.txt", bill)?,
        })
    }

    pub fn sms(&self, bill: &BillView<'_>) -> Result<String, minijinja::Error> {
        Ok(self.render("sms.txt", bill)?.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Item> {
        vec![
            Item {
                name: "Mobile plan <5G>".into(),
                amount_minor: 55_000,
            },
            Item {
                name: "Device instalment".into(),
                amount_minor: 30_000,
            },
        ]
    }

    fn view(items: &[Item]) -> BillView<'_> {
        BillView {
            bill_id: Uuid::parse_str("01936f3e-0000-7000-8000-000000000001").unwrap(),
            name: "Kim Minsu",
            email: "minsu.kim@example.kr",
            phone: "+821012345678",
            billing_period: "2026-11",
            due_date: NaiveDate::from_ymd_opt(2026, 12, 15).unwrap(),
            currency: "KRW",
            total_minor: 85_000,
            items,
        }
    }

    #[test]
    fn the_email_matches_the_committed_expected_rendering() {
        let items = items();
        let r = Renderer::new(None).unwrap().email(&view(&items)).unwrap();
        let got = format!("{}\n---\n{}\n---\n{}", r.subject, r.html, r.text);
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected/email.rendered");
        // UPDATE_EXPECT=1 accepts a deliberate change (review the diff before committing).
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            got, expected,
            "rendered email changed; if intended, rerun with UPDATE_EXPECT=1"
        );
    }

    #[test]
    fn rendered_text_shows_only_masked_personal_data_and_escapes_html() {
        let items = items();
        let renderer = Renderer::new(None).unwrap();
        let v = view(&items);
        let email = renderer.email(&v).unwrap();
        let sms = renderer.sms(&v).unwrap();
        for part in [&email.subject, &email.html, &email.text, &sms] {
            assert!(!part.contains("minsu.kim"), "{part}");
            assert!(!part.contains("Minsu"), "{part}");
            assert!(!part.contains("12345678"), "{part}");
        }
        assert!(email.html.contains("K** *****"));
        assert!(email.html.contains("m***@example.kr"));
        assert!(email.html.contains("Mobile plan &lt;5G&gt;"));
        assert!(email.text.contains("Mobile plan <5G>"));
        assert!(email.text.contains("Total: KRW 85,000"));
        assert_eq!(
            sms,
            "[Bill] K** *****, your 2026-11 bill is KRW 85,000, due 2026-12-15. Ref 01936f3e"
        );
        assert!(sms.chars().count() <= 160);
    }

    #[test]
    fn a_template_file_in_the_template_dir_overrides_the_builtin() {
        let dir = std::env::temp_dir().join(format!("consumer-templates-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sms.txt"), "Hi {{ name }}: {{ total }}").unwrap();
        let items = items();
        let r = Renderer::new(Some(&dir)).unwrap();
        assert_eq!(r.sms(&view(&items)).unwrap(), "Hi K** *****: KRW 85,000");
        assert!(r
            .email(&view(&items))
            .unwrap()
            .subject
            .starts_with("Your bill"));
        std::fs::write(dir.join("email.html"), "{% if %}").unwrap();
        let err = Renderer::new(Some(&dir)).unwrap_err();
        assert!(format!("{err:#}").contains("email.html"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
