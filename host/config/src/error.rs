//! What a configuration that cannot be used reports: the file that could not be read (with a
//! hint when it is missing), TOML's own errors, and a key whose value is wrong. It must never
//! report a problem without the key (or file) at fault.

use std::path::PathBuf;

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read. (Its error is part of the message, not a `source`: printed
    /// with its causes, it would be said twice.)
    #[error("cannot read {}: {error}{}", path.display(), missing_file_hint(error))]
    Read {
        /// The path given.
        path: PathBuf,
        /// The operating system's error (not found, permission denied…).
        error: std::io::Error,
    },
    /// What is wrong in a file, named.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The problem in it.
        error: Box<ConfigError>,
    },
    /// TOML syntax or shape (unknown key, wrong type), with toml's line and column.
    #[error("{0}")]
    Toml(toml::de::Error),
    /// A key whose value is wrong.
    #[error("{key}: {problem}")]
    Invalid {
        /// Dotted key, e.g. `endpoint[0].upstream`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// For a config file that is not there: where to start one.
fn missing_file_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::NotFound {
        " (start from the example: copy payflow-edge.example.toml from the repository to this \
         path and edit it; `payflow-edge demo` runs without one)"
    } else {
        ""
    }
}

pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), problem: problem.into() }
}
