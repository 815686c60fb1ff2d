//! Node bootstrap tokens: each line of a tokens file is `<token> <node name>`; blank lines and
//! `#` comments are skipped. A caller presenting `authorization: Bearer <token>` is that node.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why tokens could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: cannot read the node tokens file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}, line {line}: expected `<token> <node name>`, got {found:?}")]
    Malformed {
        origin: String,
        line: usize,
        found: String,
    },
    #[error("{origin}, line {line}: token already given to node {first:?}; tokens must be unique")]
    Duplicate {
        origin: String,
        line: usize,
        first: String,
    },
}

/// token → node name. Never printed with the tokens themselves.
#[derive(Clone, Default)]
pub struct NodeTokens {
    nodes: HashMap<String, String>,
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
            let mut words = line.split_whitespace();
            let (Some(token), Some(node), None) = (words.next(), words.next(), words.next()) else {
                // Do not echo the line: it may hold a token.
                let found = format!("{} words", line.split_whitespace().count());
                return Err(TokenError::Malformed {
                    origin: origin.to_owned(),
                    line: i + 1,
                    found,
                });
            };
            if let Some(first) = self.nodes.get(token) {
                return Err(TokenError::Duplicate {
                    origin: origin.to_owned(),
                    line: i + 1,
                    first: first.clone(),
                });
            }
            self.nodes.insert(token.to_owned(), node.to_owned());
        }
        Ok(())
    }

    /// Adds one token for `node`.
    pub fn insert(&mut self, token: impl Into<String>, node: impl Into<String>) {
        self.nodes.insert(token.into(), node.into());
    }

    /// The node a token belongs to.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        self.nodes.get(token).map(String::as_str)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// No token at all: every request is refused.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl fmt::Debug for NodeTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nodes: Vec<&String> = self.nodes.values().collect();
        nodes.sort();
        f.debug_struct("NodeTokens").field("nodes", &nodes).finish()
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
}
