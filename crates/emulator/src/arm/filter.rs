//! The OData `$filter` subset ARM lists take: `{name} eq '{value}'` terms joined by `and`.

/// The value of `{name} eq '{value}'` (name matched case-insensitively), if `term` is that.
pub(super) fn eq_term<'t>(term: &'t str, name: &str) -> Option<&'t str> {
    let (lhs, rhs) = term.split_once(' ')?;
    if !lhs.eq_ignore_ascii_case(name) {
        return None;
    }
    let (op, value) = rhs.trim_start().split_once(' ')?;
    if !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    value.trim().strip_prefix('\'')?.strip_suffix('\'').filter(|v| !v.contains('\''))
}

/// Split a `$filter` on ` and ` (any case).
pub(super) fn and_terms(filter: &str) -> Vec<&str> {
    let lower = filter.to_ascii_lowercase();
    let mut terms = Vec::new();
    let mut start = 0;
    while let Some(pos) = lower[start..].find(" and ") {
        terms.push(filter[start..start + pos].trim());
        start += pos + 5;
    }
    terms.push(filter[start..].trim());
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eq_terms() {
        assert_eq!(eq_term("roleName eq 'Key Vault Crypto User'", "rolename"), Some("Key Vault Crypto User"));
        assert_eq!(eq_term("roleName  eq 'x'", "roleName"), Some("x"));
        assert_eq!(eq_term("roleName ne 'x'", "roleName"), None);
        assert_eq!(eq_term("roleName eq 'x' or '1'", "roleName"), None);
        assert_eq!(and_terms("a and b AND c"), vec!["a", "b", "c"]);
    }
}
