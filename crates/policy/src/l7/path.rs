//! HTTP request targets, normalized before an HTTP rule sees them.
//!
//! Owns the one normal form of a request target: the HTTP proxy matches
//! rules against it *and forwards it*, and `policy trace --http-path` shows
//! it, so what a rule allowed is exactly what the server receives.
//! `/api/v1/../admin`, `/api//v1/products` and `/api/v1/%70roducts` can
//! neither slip past a rule that allows only some paths nor be refused when
//! they mean an allowed one.
//!
//! The steps are Cilium's (its Envoy listener sets `normalize_path` and
//! `merge_slashes`), in Envoy's order, on the path only (the query string is
//! checked, never rewritten):
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, the other escapes upper-cased; a raw `\` is a `/` (Envoy's
//!    URL canonicalizer does both); printable characters a path may not hold
//!    raw (`"`, `<`, `{`, `|`, non-ASCII, …) are percent-encoded;
//! 2. dot segments are removed (RFC 3986 §5.2.4), `%2E` included, as step 1
//!    decoded it; a `..` above the root stays at the root;
//! 3. runs of `/` are merged into one.
//!
//! Trade-off: strict where a server could disagree with the proxy about
//! what a path means. An encoded `/` or `\` (`%2F`, `%5C`) is refused by
//! default, since servers differ on whether it separates segments;
//! [`EscapedSlashes::Unescape`] decodes it instead (Envoy's
//! `UNESCAPE_AND_FORWARD`; Cilium redirects the client to the unescaped
//! path, bulkhead forwards it). An encoded NUL, a malformed escape,
//! control characters, spaces and `#` are always refused. Escapes are
//! decoded once: `%252e` stays as sent, a literal `%2e` to the server.

/// What to do with an encoded `/` or `\` (`%2F`, `%5C`) in a path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Refuse the request (400): the default.
    #[default]
    Refuse,
    /// Decode it to `/` before dot segments are removed.
    Unescape,
}

/// Why a request target was refused (answered 400, never forwarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Neither origin form (`/path?query`) nor `*`.
    #[error("the request target must start with `/` (or be `*`)")]
    NotOriginForm,
    /// A control character, a space or `#`.
    #[error("byte 0x{byte:02X} at offset {at} may not appear in a request target")]
    InvalidByte {
        /// Offset in the target.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// `%` not followed by two hex digits.
    #[error("`%` at offset {at} is not followed by two hex digits")]
    BadEscape {
        /// Offset in the target.
        at: usize,
    },
    /// `%2F` or `%5C` in the path, refused by [`EscapedSlashes::Refuse`].
    #[error(
        "an encoded `{escape}` at offset {at} in the path: servers disagree on whether it separates segments, so it is refused (the proxy's escaped-slashes option `unescape` decodes it instead)"
    )]
    EscapedSlash {
        /// Offset in the target.
        at: usize,
        /// The escape as sent.
        escape: String,
    },
    /// `%00` in the path.
    #[error("an encoded NUL (`%00`) at offset {at} in the path")]
    EscapedNul {
        /// Offset in the target.
        at: usize,
    },
}

/// The normal form of `target` (see the module documentation), or why it
/// is refused.
pub fn normalize_target(target: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    if target == "*" {
        return Ok(target.to_owned());
    }
    if !target.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let (path, query) = match target.find('?') {
        Some(q) => (&target[..q], Some(q)),
        None => (target, None),
    };
    let canonical = canonical_path(path, slashes)?;
    let mut out = merge_slashes(&remove_dot_segments(&canonical));
    if let Some(q) = query {
        check_query(target, q + 1)?;
        out.push_str(&target[q..]);
    }
    Ok(out)
}

/// RFC 3986 `unreserved`.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a path may hold raw besides `unreserved` and `/`: `sub-delims`,
/// `:` and `@` (RFC 3986 `pchar`).
fn path_delim(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

/// Never in a request target: controls, space, DEL, and `#` (a fragment is
/// never sent).
fn forbidden(b: u8) -> bool {
    b <= b' ' || b == 0x7F || b == b'#'
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XX` at `at` in `s` encodes.
fn escape_at(s: &[u8], at: usize) -> Result<u8, PathError> {
    match (s.get(at + 1).copied().and_then(hex), s.get(at + 2).copied().and_then(hex)) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadEscape { at }),
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

/// Step 1: one spelling per character.
fn canonical_path(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let s = path.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let v = escape_at(s, i)?;
            match v {
                0 => return Err(PathError::EscapedNul { at: i }),
                b'/' | b'\\' => match slashes {
                    EscapedSlashes::Refuse => {
                        return Err(PathError::EscapedSlash { at: i, escape: path[i..i + 3].to_owned() });
                    }
                    EscapedSlashes::Unescape => out.push('/'),
                },
                v if unreserved(v) => out.push(char::from(v)),
                v => push_escaped(&mut out, v),
            }
            i += 3;
            continue;
        }
        if forbidden(b) {
            return Err(PathError::InvalidByte { at: i, byte: b });
        }
        match b {
            b'\\' => out.push('/'),
            b'/' => out.push('/'),
            b if unreserved(b) || path_delim(b) => out.push(char::from(b)),
            b => push_escaped(&mut out, b),
        }
        i += 1;
    }
    Ok(out)
}

/// Step 2, RFC 3986 §5.2.4 on a path that starts with `/`: segment by
/// segment, `.` goes, `..` takes the segment before it (none above the
/// root); a dot segment at the end leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    kept.pop();
                }
                if i == last {
                    kept.push("");
                }
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in kept {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Step 3.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The query (from `start` in `target`) may hold what a path may, `/` and
/// `?`, and well-formed escapes; it is forwarded as sent.
fn check_query(target: &str, start: usize) -> Result<(), PathError> {
    let s = target.as_bytes();
    let mut i = start;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            escape_at(s, i)?;
            i += 3;
            continue;
        }
        if forbidden(b) || !b.is_ascii() {
            return Err(PathError::InvalidByte { at: i, byte: b });
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(t: &str) -> Result<String, PathError> {
        normalize_target(t, EscapedSlashes::Refuse)
    }

    #[test]
    fn the_issue_s_bypass_attempts_mean_what_they_say() {
        for (sent, meant) in [
            ("/api/v1/../admin", "/api/admin"),
            ("/api//v1/products", "/api/v1/products"),
            ("/api/v1/%70roducts", "/api/v1/products"),
            ("/api/v1/./products", "/api/v1/products"),
            ("/api/v1/%2e%2E/admin", "/api/admin"),
            ("/api/v1/.%2e/admin", "/api/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api\\v1\\products", "/api/v1/products"),
            ("///api/v1/products", "/api/v1/products"),
            ("/api/v1/products/.", "/api/v1/products/"),
            ("/api/v1/products/..", "/api/v1/"),
            ("/..", "/"),
            ("/", "/"),
            ("*", "*"),
        ] {
            assert_eq!(n(sent).as_deref(), Ok(meant), "{sent}");
        }
    }

    #[test]
    fn the_query_is_checked_and_kept_as_sent() {
        assert_eq!(n("/a/../b?x=/../%2f&y=%7e").as_deref(), Ok("/b?x=/../%2f&y=%7e"));
        assert_eq!(n("/a?x=%zz"), Err(PathError::BadEscape { at: 5 }));
        assert_eq!(n("/a?x=1 2"), Err(PathError::InvalidByte { at: 6, byte: b' ' }));
    }

    #[test]
    fn escapes_are_upper_cased_and_other_characters_encoded() {
        assert_eq!(n("/a%3bb/%7e%41").as_deref(), Ok("/a%3Bb/~A"));
        assert_eq!(n("/a|b/{c}/é").as_deref(), Ok("/a%7Cb/%7Bc%7D/%C3%A9"));
        assert_eq!(n("/a%25/b").as_deref(), Ok("/a%25/b"), "an encoded % stays encoded");
        assert_eq!(n("/a%252e%252e/b").as_deref(), Ok("/a%252e%252e/b"), "escapes are decoded once");
    }

    #[test]
    fn escaped_separators_are_refused_unless_unescaped() {
        assert!(matches!(n("/api%2F..%2Fadmin"), Err(PathError::EscapedSlash { at: 4, .. })));
        assert!(matches!(n("/api%5cadmin"), Err(PathError::EscapedSlash { at: 4, .. })));
        let u = |t| normalize_target(t, EscapedSlashes::Unescape);
        assert_eq!(u("/api/v1%2F..%2Fadmin").as_deref(), Ok("/api/admin"));
        assert_eq!(u("/api%5Cv1").as_deref(), Ok("/api/v1"));
        assert_eq!(u("/a%00b"), Err(PathError::EscapedNul { at: 2 }), "NUL is never unescaped");
    }

    #[test]
    fn malformed_targets_are_refused_with_the_offset() {
        assert_eq!(n("api/v1"), Err(PathError::NotOriginForm));
        assert_eq!(n("http://x/a"), Err(PathError::NotOriginForm));
        assert_eq!(n(""), Err(PathError::NotOriginForm));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape { at: 2 }));
        assert_eq!(n("/a%g0"), Err(PathError::BadEscape { at: 2 }));
        assert_eq!(n("/a#frag"), Err(PathError::InvalidByte { at: 2, byte: b'#' }));
        assert_eq!(n("/a\tb"), Err(PathError::InvalidByte { at: 2, byte: b'\t' }));
        assert_eq!(n("/a%00"), Err(PathError::EscapedNul { at: 2 }));
    }
}
