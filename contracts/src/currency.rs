//! ISO 4217 currency codes, parsed once at the edge.
//!
//! A [`Currency`] can only hold three ASCII upper-case letters, so code that has
//! one never checks it again. On the wire it is the plain string (`"BRL"`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency code such as `BRL`: exactly three ASCII upper-case letters.
///
/// Whether the code is assigned by ISO is not checked: the pipeline stores and
/// forwards it, it does not convert money.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// Why a text is not a [`Currency`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("currency {0:?} is not a three-letter ISO 4217 code such as BRL")]
pub struct CurrencyError(String);

impl Currency {
    /// The Brazilian real, the seed's currency and the API's default.
    pub const BRL: Currency = Currency(*b"BRL");

    /// The code, e.g. `"BRL"`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Three ASCII letters by construction, hence UTF-8: the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl TryFrom<&str> for Currency {
    type Error = CurrencyError;

    fn try_from(code: &str) -> Result<Self, Self::Error> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(CurrencyError(crate::event::truncate(code, 20))),
        }
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;

    fn from_str(code: &str) -> Result<Self, Self::Err> {
        Self::try_from(code)
    }
}

impl AsRef<str> for Currency {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<&str> for Currency {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = Currency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a three-letter ISO 4217 currency code such as \"BRL\"")
            }

            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::try_from(code).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn three_upper_case_letters_are_a_currency() {
        for code in ["BRL", "EUR", "USD", "XXX"] {
            let c = Currency::try_from(code).unwrap();
            assert_eq!(c.as_str(), code);
            assert_eq!(c.to_string(), code);
            assert_eq!(code.parse::<Currency>(), Ok(c));
        }
        assert_eq!(Currency::BRL.as_str(), "BRL");
    }

    #[test]
    fn anything_else_is_refused_with_the_value() {
        for code in [
            "",
            "BR",
            "BRLX",
            "brl",
            "Brl",
            "BR1",
            "B L",
            "BRŁ",
            "ＢＲＬ",
            " BRL",
            "€€€",
        ] {
            let err = Currency::try_from(code).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("currency {code:?} is not a three-letter ISO 4217 code such as BRL")
            );
        }
        let long = "X".repeat(1_000);
        assert!(
            Currency::try_from(long.as_str())
                .unwrap_err()
                .to_string()
                .len()
                < 100
        );
    }

    #[test]
    fn serde_is_the_plain_string_and_refuses_invalid_codes() {
        assert_eq!(serde_json::to_string(&Currency::BRL).unwrap(), r#""BRL""#);
        assert_eq!(
            serde_json::from_str::<Currency>(r#""EUR""#)
                .unwrap()
                .as_str(),
            "EUR"
        );
        let err = serde_json::from_str::<Currency>(r#""eur""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(r#"currency "eur" is not a three-letter ISO 4217 code such as BRL"#),
            "{err}"
        );
        let err = serde_json::from_str::<Currency>("978").unwrap_err();
        assert!(
            err.to_string()
                .contains(r#"expected a three-letter ISO 4217 currency code such as "BRL""#),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn a_code_is_accepted_exactly_when_it_is_three_upper_case_letters(
            code in prop_oneof!["[A-Z]{3}", "[A-Za-z0-9]{2,4}", ".{0,5}"],
        ) {
            let expected = code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase());
            match Currency::try_from(code.as_str()) {
                Ok(c) => {
                    prop_assert!(expected, "{code:?} accepted");
                    prop_assert_eq!(c.as_str(), code.as_str());
                }
                Err(_) => prop_assert!(!expected, "{code:?} refused"),
            }
        }
    }
}
