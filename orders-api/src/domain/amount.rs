//! Order amounts: parsed exactly from the seed's decimal `amount` into integer cents.
//!
//! The API accepts `29.99` (a JSON number) or `"29.99"` (a string). Floats are never
//! involved: the JSON text of the number is read digit by digit, so `0.1`, `1e2`,
//! `2.50` and `100000000e-6` all mean exactly what they say, and `29.999` is refused
//! instead of being rounded.

use contracts::event::MAX_AMOUNT_CENTS;
use serde_json::value::RawValue;

/// A positive amount of money in minor units (cents), at most
/// [`MAX_AMOUNT_CENTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a JSON number nor a string holding one.
    #[error("amount must be a decimal number such as 29.99 (a JSON number or string)")]
    NotANumber,
    /// Zero or negative.
    #[error("amount must be greater than zero")]
    NotPositive,
    /// A non-zero digit below the cent.
    #[error("amount must have at most 2 decimal places")]
    TooPrecise,
    /// Above the limit.
    #[error("amount must be at most 1000000.00")]
    TooLarge,
}

impl Amount {
    /// The amount in cents.
    #[must_use]
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// Builds an amount from cents.
    ///
    /// # Errors
    /// [`AmountError::NotPositive`] or [`AmountError::TooLarge`].
    pub fn from_cents(cents: i64) -> Result<Self, AmountError> {
        if cents <= 0 {
            Err(AmountError::NotPositive)
        } else if cents > MAX_AMOUNT_CENTS {
            Err(AmountError::TooLarge)
        } else {
            Ok(Self(cents))
        }
    }

    /// The amount as a decimal with two places, e.g. `29.99`.
    #[must_use]
    pub fn to_decimal(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }

    /// The amount as a raw JSON number with two places (exact on the wire).
    ///
    /// # Errors
    /// None in practice: digits with one dot are always a valid JSON number.
    pub fn to_json_number(self) -> Result<Box<RawValue>, serde_json::Error> {
        RawValue::from_string(self.to_decimal())
    }

    /// Parses the raw JSON value of the `amount` field: a number, or a string
    /// holding a number in the same JSON grammar.
    ///
    /// # Errors
    /// [`AmountError`] saying why the value is not an acceptable amount.
    pub fn from_json(raw: &RawValue) -> Result<Self, AmountError> {
        let text = raw.get().trim();
        if text.starts_with('"') {
            let inner: String = serde_json::from_str(text).map_err(|_| AmountError::NotANumber)?;
            Self::parse(&inner)
        } else {
            Self::parse(text)
        }
    }

    /// Parses a number in JSON's grammar (`-?int(.frac)?([eE][+-]?exp)?`) exactly.
    ///
    /// # Errors
    /// [`AmountError`] saying why the text is not an acceptable amount.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        let n = Decimal::parse(text).ok_or(AmountError::NotANumber)?;
        // Significant digits without leading or trailing zeros.
        let digits = n.digits.trim_start_matches('0');
        let trimmed = digits.trim_end_matches('0');
        if trimmed.is_empty() || n.negative {
            return Err(AmountError::NotPositive);
        }
        let trailing = i64::try_from(digits.len() - trimmed.len()).unwrap_or(i64::MAX);
        // value = trimmed × 10^scale cents
        let scale = n
            .exponent
            .saturating_add(trailing)
            .saturating_add(2)
            .saturating_sub(n.fraction_len);
        if scale < 0 {
            return Err(AmountError::TooPrecise);
        }
        let magnitude = i64::try_from(trimmed.len()).unwrap_or(i64::MAX);
        // MAX_AMOUNT_CENTS has 9 digits; anything longer is too large without computing it.
        if magnitude.saturating_add(scale) > 9 {
            return Err(AmountError::TooLarge);
        }
        let base: i64 = trimmed.parse().map_err(|_| AmountError::TooLarge)?;
        let cents = 10_i64
            .checked_pow(u32::try_from(scale).map_err(|_| AmountError::TooLarge)?)
            .and_then(|p| base.checked_mul(p))
            .ok_or(AmountError::TooLarge)?;
        Self::from_cents(cents)
    }
}

/// A JSON number taken apart: `digits` (integer and fraction digits together),
/// how many of them are fraction digits, and the exponent.
struct Decimal<'a> {
    negative: bool,
    digits: std::borrow::Cow<'a, str>,
    fraction_len: i64,
    exponent: i64,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, rest) = rest.split_at(int_end);
        // JSON: at least one digit, and no leading zero unless the part is "0".
        if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
            return None;
        }
        let (frac, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let end = after
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after.len());
                if end == 0 {
                    return None;
                }
                after.split_at(end)
            }
            None => ("", rest),
        };
        let exponent = match rest.strip_prefix(['e', 'E']) {
            Some(exp) => {
                let (sign, digits) = match exp.strip_prefix(['+', '-']) {
                    Some(d) => (if exp.starts_with('-') { -1 } else { 1 }, d),
                    None => (1, exp),
                };
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Beyond this the value is out of range either way; saturate.
                let value: i64 = digits.parse().unwrap_or(1_000_000_000);
                sign * value.min(1_000_000_000)
            }
            None if rest.is_empty() => 0,
            None => return None,
        };
        let digits = if frac.is_empty() {
            std::borrow::Cow::Borrowed(int)
        } else {
            std::borrow::Cow::Owned(format!("{int}{frac}"))
        };
        Some(Self {
            negative,
            digits,
            fraction_len: i64::try_from(frac.len()).unwrap_or(i64::MAX),
            exponent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cents(text: &str) -> Result<i64, AmountError> {
        Amount::parse(text).map(Amount::cents)
    }

    fn raw(json: &str) -> Result<i64, AmountError> {
        let raw: Box<RawValue> = serde_json::from_str(json).unwrap();
        Amount::from_json(&raw).map(Amount::cents)
    }

    #[test]
    fn exact_decimals() {
        assert_eq!(cents("29.99"), Ok(2999));
        assert_eq!(cents("0.1"), Ok(10));
        assert_eq!(cents("0.01"), Ok(1));
        assert_eq!(cents("0.30"), Ok(30));
        assert_eq!(cents("2.50"), Ok(250));
        assert_eq!(cents("29.990000"), Ok(2999));
        assert_eq!(cents("1e2"), Ok(10_000));
        assert_eq!(cents("1E+2"), Ok(10_000));
        assert_eq!(cents("2.5e-1"), Ok(25));
        assert_eq!(cents("100000000e-6"), Ok(10_000));
        assert_eq!(cents("1000000"), Ok(100_000_000));
        assert_eq!(cents("1000000.00"), Ok(100_000_000));
        assert_eq!(cents("0.00000000000000000000000001e26"), Ok(100));
    }

    #[test]
    fn refused_amounts() {
        assert_eq!(cents("29.999"), Err(AmountError::TooPrecise));
        assert_eq!(cents("0.001"), Err(AmountError::TooPrecise));
        assert_eq!(cents("1e-3"), Err(AmountError::TooPrecise));
        assert_eq!(
            cents("1e-999999999999999999999"),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(cents("0"), Err(AmountError::NotPositive));
        assert_eq!(cents("0.00"), Err(AmountError::NotPositive));
        assert_eq!(cents("-0"), Err(AmountError::NotPositive));
        assert_eq!(cents("-5"), Err(AmountError::NotPositive));
        assert_eq!(cents("0e999999"), Err(AmountError::NotPositive));
        assert_eq!(cents("1000000.01"), Err(AmountError::TooLarge));
        assert_eq!(cents("1e7"), Err(AmountError::TooLarge));
        assert_eq!(cents("1e999999999999999999999"), Err(AmountError::TooLarge));
        assert_eq!(cents(&"9".repeat(400)), Err(AmountError::TooLarge));
        for bad in [
            "", "-", ".5", "5.", "01", "+5", "1e", "1e+", "0x10", "NaN", "Infinity", "1,5", " 1",
            "1 ", "1.2.3", "١٢",
        ] {
            assert_eq!(cents(bad), Err(AmountError::NotANumber), "{bad:?}");
        }
    }

    #[test]
    fn json_values() {
        assert_eq!(raw("29.99"), Ok(2999));
        assert_eq!(raw("\"29.99\""), Ok(2999));
        assert_eq!(raw("\"1e2\""), Ok(10_000));
        for bad in [
            "null",
            "true",
            "[]",
            "{}",
            "\"\"",
            "\"abc\"",
            "[29.99]",
            "{\"v\":1}",
        ] {
            assert_eq!(raw(bad), Err(AmountError::NotANumber), "{bad}");
        }
        assert_eq!(raw("\"29.999\""), Err(AmountError::TooPrecise));
    }

    #[test]
    fn formatting_round_trips() {
        let a = Amount::from_cents(2999).unwrap();
        assert_eq!(a.to_decimal(), "29.99");
        assert_eq!(a.to_json_number().unwrap().get(), "29.99");
        assert_eq!(Amount::from_cents(5).unwrap().to_decimal(), "0.05");
        assert_eq!(Amount::from_cents(100).unwrap().to_decimal(), "1.00");
    }

    /// Checks what `Amount::parse` said about `text` against two independent
    /// readings of it: serde_json's JSON grammar (with JSON's surrounding
    /// whitespace refused, as the API refuses it) and Rust's float parsing.
    fn agrees_with_other_parsers(text: &str) -> Result<(), TestCaseError> {
        let json_number =
            text.trim() == text && serde_json::from_str::<serde_json::Number>(text).is_ok();
        let value = text.parse::<f64>().ok();
        match Amount::parse(text) {
            Ok(amount) => {
                prop_assert!(json_number, "{text:?} accepted but is no JSON number");
                let value = value.unwrap();
                let expected = amount.cents() as f64 / 100.0;
                prop_assert!(
                    (value - expected).abs() <= 1e-9 * value.abs().max(1.0),
                    "{text:?} is {value}, parsed as {} cents",
                    amount.cents()
                );
                prop_assert!((1..=MAX_AMOUNT_CENTS).contains(&amount.cents()));
            }
            // A JSON number is never "not a number" (one too large for serde_json
            // is not one of them: it is refused as too large).
            Err(AmountError::NotANumber) => prop_assert!(!json_number, "{text:?} is a number"),
            Err(AmountError::NotPositive) => {
                prop_assert!(value.is_some_and(|v| v <= 0.0), "{text:?} is positive")
            }
            Err(AmountError::TooLarge) => {
                prop_assert!(value.is_some_and(|v| v > 1_000_000.0), "{text:?} is small")
            }
            Err(AmountError::TooPrecise) => prop_assert!(
                !text.starts_with('-') && value.is_some_and(|v| v >= 0.0),
                "{text:?} is not positive"
            ),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn any_text_is_an_exact_amount_or_refused_for_the_right_reason(s in ".{0,64}") {
            agrees_with_other_parsers(&s)?;
        }

        #[test]
        fn number_like_text_is_an_exact_amount_or_refused_for_the_right_reason(
            s in "-?[0-9]{0,30}(\\.[0-9]{0,30})?([eE][+-]?[0-9]{0,25})?",
        ) {
            agrees_with_other_parsers(&s)?;
        }

        #[test]
        fn every_cent_value_round_trips(c in 1_i64..=MAX_AMOUNT_CENTS) {
            let a = Amount::from_cents(c).unwrap();
            prop_assert_eq!(Amount::parse(&a.to_decimal()), Ok(a));
            // The same value with an exponent and padding zeros.
            let scaled = format!("{}e-2", c);
            prop_assert_eq!(Amount::parse(&scaled), Ok(a));
            let padded = format!("{}0000", a.to_decimal());
            prop_assert_eq!(Amount::parse(&padded), Ok(a));
        }

        #[test]
        fn a_third_decimal_is_always_refused(c in 1_i64..=MAX_AMOUNT_CENTS, d in 1_u8..=9) {
            let text = format!("{}{}", Amount::from_cents(c).unwrap().to_decimal(), d);
            prop_assert_eq!(Amount::parse(&text), Err(AmountError::TooPrecise));
        }
    }
}
