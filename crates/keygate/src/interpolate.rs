//! `${VAR}` in config-file values, as Kubernetes and compose users write
//! them: `${VAR}` is the variable's value, `${VAR:-default}` the default
//! when the variable is unset or empty, and `$$` a literal `$`. A `$` that
//! starts neither stays as written, so existing values with a `$` (a
//! password, an nginx variable) keep their meaning. Substitution happens in
//! the parsed YAML's string values, never in its text, so a variable's value
//! cannot add keys or change the document's structure.

use std::borrow::Cow;

/// Why a value's `${…}` cannot be expanded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${VAR}` without a default, and `VAR` is not set.
    #[error(
        "environment variable `{0}` is not set (set it, or write `${{{0}:-default}}` for a default)"
    )]
    Missing(String),
    /// `${` without its `}`.
    #[error("`${{` without a closing `}}` (write `$$` for a literal `$`)")]
    Unclosed,
    /// Not a variable name (letters, digits and `_`, not starting with a digit).
    #[error("`${{{0}}}`: not a variable name (letters, digits and `_`)")]
    BadName(String),
}

/// `text` with every `${VAR}`, `${VAR:-default}` and `$$` replaced; `lookup`
/// reads a variable. Unchanged text is borrowed.
pub fn expand<'a>(
    text: &'a str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'a, str>, InterpolateError> {
    if !text.contains('$') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(InterpolateError::Unclosed)?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(InterpolateError::BadName(inner.to_owned()));
            }
            match (
                lookup(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => return Err(InterpolateError::Missing(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr$t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn x(text: &str) -> Result<String, InterpolateError> {
        expand(text, &env).map(Cow::into_owned)
    }

    #[test]
    fn variables_defaults_and_escapes() {
        assert_eq!(x("${SECRET}").unwrap(), "s3cr$t");
        assert_eq!(x("a-${SECRET}-b").unwrap(), "a-s3cr$t-b");
        assert_eq!(x("${UNSET:-fallback}").unwrap(), "fallback");
        assert_eq!(x("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(x("${SECRET:-fallback}").unwrap(), "s3cr$t");
        assert_eq!(x("${UNSET:-}").unwrap(), "");
        assert_eq!(x("${EMPTY}").unwrap(), "");
        assert_eq!(x("$${SECRET}").unwrap(), "${SECRET}");
        assert_eq!(x("pa$$word").unwrap(), "pa$word");
        // A `$` that starts nothing stays: nginx variables, passwords.
        assert_eq!(x("$request_uri and $").unwrap(), "$request_uri and $");
        assert!(matches!(expand("plain", &env).unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn a_value_is_substituted_once_not_rescanned() {
        // SECRET's own `$` is not read as syntax.
        assert_eq!(x("${SECRET}${SECRET}").unwrap(), "s3cr$ts3cr$t");
    }

    #[test]
    fn errors_name_the_variable() {
        assert_eq!(
            x("x ${NOPE} y"),
            Err(InterpolateError::Missing("NOPE".into()))
        );
        assert!(
            InterpolateError::Missing("NOPE".into())
                .to_string()
                .contains("${NOPE:-default}")
        );
        assert_eq!(x("${OPEN"), Err(InterpolateError::Unclosed));
        assert_eq!(x("${}"), Err(InterpolateError::BadName(String::new())));
        assert_eq!(x("${1X}"), Err(InterpolateError::BadName("1X".into())));
        assert_eq!(x("${A-B}"), Err(InterpolateError::BadName("A-B".into())));
    }
}
