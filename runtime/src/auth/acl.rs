//! Topic access control: allow/deny globs from config and from a JWT claim.

use serde_json::Value;

/// Glob match with `*` (any run, including empty) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// An allow list (empty: everything) and a deny list, deny winning.
#[derive(Debug, Clone, Default)]
pub struct TopicAcl {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl TopicAcl {
    pub fn permits(&self, topic: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|g| glob_match(g, topic)))
            && !self.deny.iter().any(|g| glob_match(g, topic))
    }

    /// Reads `{"allow": [...], "deny": [...]}` from a claim value.
    pub fn from_claim(v: &Value) -> Option<TopicAcl> {
        let obj = v.as_object()?;
        let list = |k: &str| -> Vec<String> {
            obj.get(k)
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        Some(TopicAcl { allow: list("allow"), deny: list("deny") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("news.*", "news.eu"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.x.*", "a.x.b"));
        assert!(!glob_match("news.*", "sport.eu"));
    }

    #[test]
    fn deny_wins() {
        let acl = TopicAcl { allow: vec!["*".into()], deny: vec!["admin.*".into()] };
        assert!(acl.permits("chat"));
        assert!(!acl.permits("admin.x"));
        let claim = serde_json::json!({"allow": ["user.42.*"]});
        let acl = TopicAcl::from_claim(&claim).unwrap();
        assert!(acl.permits("user.42.inbox") && !acl.permits("user.43.inbox"));
    }
}
