//! Errors of the manifest loader: each names the file, the object and, where it can, the field.

use std::fmt;
use std::path::PathBuf;

/// Where in a file an object sits, and what it is as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// 1-based position of the document in its file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    /// `kind`, if the document has one.
    pub kind: Option<String>,
    /// `metadata.namespace` (defaulted for namespaced kinds), if known.
    pub namespace: Option<String>,
    /// `metadata.name`, if the document has one.
    pub name: Option<String>,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => {
                match &self.namespace {
                    Some(ns) => write!(f, "{kind} {ns}/{name}")?,
                    None => write!(f, "{kind} {name}")?,
                }
                write!(f, " (document {}, line {})", self.document, self.line)
            }
            (Some(kind), None) => write!(
                f,
                "{kind} without a name (document {}, line {})",
                self.document, self.line
            ),
            _ => write!(f, "document {} (line {})", self.document, self.line),
        }
    }
}

/// An object (or a whole file) that could not be loaded. The rest of the folder still is.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The object is not valid YAML, misses `kind`/`apiVersion`/`metadata.name`, or a field has
    /// the wrong type or value.
    #[error("{}: {object}: {detail}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The object.
        object: ObjectRef,
        /// The field at fault (serde path such as `spec.ports[0].port`), when known.
        field: Option<String>,
        /// Everything the parser or validator said, field path and position included.
        detail: String,
    },
    /// Another object of the same kind, namespace and name was loaded first; this one is
    /// ignored (sorted file order decides which is first).
    #[error("{}: {object}: already defined in {}; this copy is ignored", file.display(), first.display())]
    Duplicate {
        /// The file of the ignored copy.
        file: PathBuf,
        /// The ignored copy.
        object: ObjectRef,
        /// The file that defined it first.
        first: PathBuf,
    },
}

impl ManifestError {
    /// The field at fault, for [`ManifestError::Invalid`] when it is known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { field, .. } => field.as_deref(),
            _ => None,
        }
    }
}
