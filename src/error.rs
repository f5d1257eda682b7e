//! One error type for the whole library.
//!
//! Every error that comes from a user's file names the file, the tensor (when there is one)
//! and what was expected, so the message alone tells the user what to fix.

use std::fmt;
use std::path::{Path, PathBuf};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors raised by eigenlorax.
///
/// More variants may be added; match with a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O failure on a named file.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A file whose content is not what was expected.
    BadInput {
        /// The file.
        path: PathBuf,
        /// The tensor (or JSON key) at fault, when the problem is local to one.
        tensor: Option<String>,
        /// What was expected, phrased so that it reads after "expected".
        message: String,
    },
    /// A coefficient file (or binding) that belongs to another subspace.
    SubspaceMismatch {
        /// The coefficient file (or bundle).
        path: PathBuf,
        /// The subspace id of the loaded bundle.
        expected: String,
        /// The subspace id the file belongs to.
        found: String,
    },
    /// Arguments that cannot work together (not tied to one file).
    Usage(String),
    /// A numerical failure (e.g. a decomposition that did not converge).
    Numeric(String),
    /// An inference engine failed: tract or ONNX Runtime could not build a plan or session,
    /// or a run failed inside it.
    Engine(String),
    /// A broken internal invariant (a bug in eigenlorax, not a problem with the input).
    Internal(String),
    /// A model the asked-for feature cannot handle, e.g. a graph with ops that have no
    /// gradient rule (the message lists them); callers may fall back (finetuning to SPSA).
    Unsupported(String),
}

impl Error {
    /// Shorthand for [`Error::BadInput`] about a file as a whole.
    pub fn bad_file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.as_ref().to_path_buf(),
            tensor: None,
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::BadInput`] about one tensor (or key) of a file.
    pub fn bad_tensor(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::BadInput {
            path: path.as_ref().to_path_buf(),
            tensor: Some(tensor.into()),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {}", path.display(), source),
            Error::BadInput {
                path,
                tensor: Some(t),
                message,
            } => {
                write!(f, "{}: tensor `{}`: {}", path.display(), t, message)
            }
            Error::BadInput {
                path,
                tensor: None,
                message,
            } => write!(f, "{}: {}", path.display(), message),
            Error::SubspaceMismatch {
                path,
                expected,
                found,
            } => write!(
                f,
                "{}: belongs to subspace {} but the loaded bundle is subspace {}",
                path.display(),
                found,
                expected
            ),
            Error::Usage(m) => write!(f, "{m}"),
            Error::Numeric(m) => write!(f, "numerical failure: {m}"),
            Error::Engine(m) => write!(f, "{m}"),
            Error::Internal(m) => write!(f, "internal: {m}"),
            Error::Unsupported(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
