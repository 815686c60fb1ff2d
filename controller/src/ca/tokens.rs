//! Bootstrap tokens: each line of a tokens file is `<token> <node name>` (a node agent) or
//! `<token> workload <namespace>/<service account>` (a workload such as a waypoint); blank
//! lines and `#` comments are skipped. A caller presenting `authorization: Bearer <token>` is
//! that node or workload.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::auth::Caller;

/// Why tokens could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: cannot read the node tokens file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{origin}, line {line}: expected `<token> <node name>` or \
         `<token> workload <namespace>/<service account>`, got {found}"
    )]
    Malformed {
        origin: String,
        line: usize,
        found: String,
    },
    #[error("{origin}, line {line}: token already given to {first}; tokens must be unique")]
    Duplicate {
        origin: String,
        line: usize,
        first: String,
    },
}

/// token → caller. Never printed with the tokens themselves.
#[derive(Clone, Default)]
pub struct NodeTokens {
    callers: HashMap<String, Caller>,
}

impl NodeTokens {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut tokens = NodeTokens::default();
        tokens.add_text(&path.display().to_string(), &text)?;
        Ok(tokens)
    }

    /// Adds the lines of `text`; `origin` names it in errors.
    pub fn add_text(&mut self, origin: &str, text: &str) -> Result<(), TokenError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let malformed = |found: String| TokenError::Malformed {
                origin: origin.to_owned(),
                line: i + 1,
                found,
            };
            let (token, caller) = match words.as_slice() {
                [token, node] => (*token, Caller::Node((*node).to_owned())),
                [token, "workload", identity] => {
                    let (namespace, service_account) = identity
                        .split_once('/')
                        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains('/'))
                        .ok_or_else(|| {
                            malformed(format!("workload {identity:?}, not <namespace>/<name>"))
                        })?;
                    let caller = Caller::Workload {
                        namespace: namespace.to_owned(),
                        service_account: service_account.to_owned(),
                    };
                    (*token, caller)
                }
                // Do not echo the line: it may hold a token.
                other => return Err(malformed(format!("{} words", other.len()))),
            };
            if let Some(first) = self.callers.get(token) {
                return Err(TokenError::Duplicate {
                    origin: origin.to_owned(),
                    line: i + 1,
                    first: first.to_string(),
                });
            }
            self.callers.insert(token.to_owned(), caller);
        }
        Ok(())
    }

    /// Adds one token for `node`.
    pub fn insert(&mut self, token: impl Into<String>, node: impl Into<String>) {
        self.callers.insert(token.into(), Caller::Node(node.into()));
    }

    /// Adds one token for the workload of ServiceAccount `namespace/service_account`.
    pub fn insert_workload(
        &mut self,
        token: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) {
        let caller = Caller::Workload {
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        self.callers.insert(token.into(), caller);
    }

    /// The caller a token belongs to.
    pub fn caller_of(&self, token: &str) -> Option<&Caller> {
        self.callers.get(token)
    }

    /// The node a token belongs to (`None` for unknown and workload tokens).
    pub fn node_of(&self, token: &str) -> Option<&str> {
        match self.callers.get(token)? {
            Caller::Node(node) => Some(node),
            Caller::Workload { .. } => None,
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    /// No token at all: every request is refused.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

impl fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut callers: Vec<String> = self.callers.values().map(ToString::to_string).collect();
        callers.sort();
        f.debug_struct("NodeTokens")
            .field("callers", &callers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_refuses_bad_ones() {
        let mut t = NodeTokens::default();
        t.add_text("f", "# comment\n\nabc node-1\n  def   node-2  \n")
            .unwrap();
        assert_eq!(t.node_of("abc"), Some("node-1"));
        assert_eq!(t.node_of("def"), Some("node-2"));
        assert_eq!(t.node_of("node-1"), None);
        let err = t.add_text("f", "lonely-secret\n").unwrap_err().to_string();
        assert!(
            err.contains("line 1") && !err.contains("lonely-secret"),
            "{err}"
        );
        let err = t.add_text("f", "abc node-3\n").unwrap_err().to_string();
        assert!(err.contains("node-1"), "{err}");
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn workload_lines() {
        let mut t = NodeTokens::default();
        t.add_text("f", "wp-secret workload bookinfo/waypoint\n")
            .unwrap();
        assert_eq!(
            t.caller_of("wp-secret"),
            Some(&Caller::Workload {
                namespace: "bookinfo".into(),
                service_account: "waypoint".into()
            })
        );
        // A workload token is no node token.
        assert_eq!(t.node_of("wp-secret"), None);
        for bad in [
            "s workload waypoint",
            "s workload /waypoint",
            "s workload ns/",
            "s workload a/b/c",
            "s client ns/sa",
        ] {
            let err = t.add_text("f", bad).unwrap_err().to_string();
            assert!(
                err.contains("line 1") && !err.contains("s "),
                "{bad}: {err}"
            );
        }
        let err = t
            .add_text("f", "wp-secret node-1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workload bookinfo/waypoint"), "{err}");
    }
}
