//! YAML 1.2 core-schema typing of plain scalars.
//!
//! The API server types fields by JSON type; YAML decides a plain scalar's
//! type by its text. `port: 80` is an integer, `port: "80"` a string, and a
//! string field refuses the former. This module is that one decision.

/// The JSON type a YAML scalar has under the core schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarType {
    /// A string.
    Str,
    /// An integer.
    Int,
    /// A floating-point number.
    Float,
    /// true / false.
    Bool,
}

impl ScalarType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Str => "string",
            Self::Int => "integer",
            Self::Float => "number",
            Self::Bool => "boolean",
        }
    }
}

/// The type of a scalar; quoted scalars are always strings.
pub(crate) fn scalar_type(text: &str, quoted: bool) -> ScalarType {
    if quoted {
        return ScalarType::Str;
    }
    if matches!(text, "true" | "True" | "TRUE" | "false" | "False" | "FALSE") {
        return ScalarType::Bool;
    }
    if parse_int(text).is_some() {
        return ScalarType::Int;
    }
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    let is_float = matches!(t, ".inf" | ".Inf" | ".INF")
        || matches!(text, ".nan" | ".NaN" | ".NAN")
        || (t.chars().any(|c| c.is_ascii_digit())
            && t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            && t.parse::<f64>().is_ok());
    if is_float { ScalarType::Float } else { ScalarType::Str }
}

/// Parses a core-schema integer: decimal with optional sign, `0o` octal, `0x` hex.
pub(crate) fn parse_int(text: &str) -> Option<i64> {
    if let Some(h) = text.strip_prefix("0x") {
        return i64::from_str_radix(h, 16).ok();
    }
    if let Some(o) = text.strip_prefix("0o") {
        return i64::from_str_radix(o, 8).ok();
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing() {
        assert_eq!(scalar_type("80", false), ScalarType::Int);
        assert_eq!(scalar_type("80", true), ScalarType::Str);
        assert_eq!(scalar_type("true", false), ScalarType::Bool);
        assert_eq!(scalar_type("yes", false), ScalarType::Str);
        assert_eq!(scalar_type("1.5", false), ScalarType::Float);
        assert_eq!(scalar_type("1.2.3", false), ScalarType::Str);
        assert_eq!(scalar_type("http", false), ScalarType::Str);
        assert_eq!(scalar_type("e", false), ScalarType::Str);
        assert_eq!(parse_int("0x10"), Some(16));
        assert_eq!(parse_int("-5"), Some(-5));
        assert_eq!(parse_int("5a"), None);
    }
}
