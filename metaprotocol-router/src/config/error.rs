//! Config errors that name the field, the reason and, where the document is known, the line and
//! column.

use std::fmt;

/// A place in a config document: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column (in characters), from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// An invalid configuration: where (a field path such as `listeners[0].route_config`, and the
/// line and column when the error came from a document) and why.
///
/// Displayed as `listeners[0].route_config (line 7, column 19): no route config named `x``.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigError {
    /// The path of the offending field, `""` for the document itself.
    pub field: String,
    /// Why the value was rejected.
    pub reason: String,
    /// Where the field is in the document; `None` when the error was not found in (or did not
    /// come from) a document, see [`ConfigError::located_in`].
    pub position: Option<Position>,
    /// True if it came from a file the config names (one missing, unreadable, not read in
    /// time, or refused for what it holds): writing the file may mend it, the config unchanged.
    pub(crate) from_a_file: bool,
    /// True if the proxy did not read that file in time (its read had not ended by the
    /// update's deadline, or no thread was free to read it): the proxy's failure, not the
    /// config's.
    pub(crate) not_read: bool,
    /// The files the update that found the error read, as they looked when it read them, when
    /// it came from one of them.
    pub(crate) files_read: Option<std::sync::Arc<crate::file_stamp::FilesLooked>>,
}

impl ConfigError {
    /// An error about `field`, with no position yet.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            position: None,
            from_a_file: false,
            not_read: false,
            files_read: None,
        }
    }

    /// The same error, said to come from a file the config names (see
    /// [`ConfigError::comes_from_a_file`]).
    pub(crate) fn of_a_file(self) -> Self {
        Self {
            from_a_file: true,
            ..self
        }
    }

    /// The same error, said to come from one of the files `read` (see
    /// [`ConfigError::files_read`]).
    pub(crate) fn of_files_read(self, read: crate::file_stamp::FilesLooked) -> Self {
        Self {
            files_read: Some(std::sync::Arc::new(read)),
            ..self.of_a_file()
        }
    }

    /// The files read by the update that found the error, as they looked when it read them, if
    /// it came from one of them: until one of them changes, the same config fails the same way.
    pub(crate) fn files_read(&self) -> Option<&crate::file_stamp::FilesLooked> {
        self.files_read.as_deref()
    }

    /// True if the error came from a file the config names: writing the file may mend it.
    pub(crate) fn comes_from_a_file(&self) -> bool {
        self.from_a_file
    }

    /// The same error, said to come from a file the config names that the proxy did not read
    /// in time (see [`ConfigError::was_not_read`]).
    pub(crate) fn of_a_file_not_read(self) -> Self {
        Self {
            not_read: true,
            ..self.of_a_file()
        }
    }

    /// True if the error came from a file the proxy did not read in time: the same config may
    /// apply once the file system answers.
    pub(crate) fn was_not_read(&self) -> bool {
        self.not_read
    }

    /// The same error with `prefix` prepended to its field path.
    pub fn within(self, prefix: &str) -> Self {
        let field = match (prefix.is_empty(), self.field.is_empty()) {
            (true, _) => self.field,
            (false, true) => prefix.to_owned(),
            (false, false) if self.field.starts_with('[') => format!("{prefix}{}", self.field),
            (false, false) => format!("{prefix}.{}", self.field),
        };
        Self { field, ..self }
    }

    /// The same error with the position of its field in `document`, the YAML or JSON text the
    /// config was read from (the nearest enclosing node's when the field itself is not written
    /// there, e.g. a defaulted one). An error that already has a position keeps it.
    ///
    /// [`Config::from_yaml`](super::Config::from_yaml) does this for its own errors; use it for
    /// errors found later, such as those of
    /// [`ProxyBuilder::check`](crate::ProxyBuilder::check).
    pub fn located_in(self, document: &str) -> Self {
        if self.position.is_some() {
            return self;
        }
        let position = super::source::position_of(document, &self.field);
        Self { position, ..self }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.field.is_empty(), &self.position) {
            (true, None) => write!(f, "{}", self.reason),
            (true, Some(position)) => write!(f, "{position}: {}", self.reason),
            (false, None) => write!(f, "{}: {}", self.field, self.reason),
            (false, Some(position)) => write!(f, "{} ({position}): {}", self.field, self.reason),
        }
    }
}

/// Every error found while checking a config, each with its field path: a check goes on past
/// the first error so that `validate` can report them all at once.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    found: Vec<ConfigError>,
}

impl Errors {
    /// Records `error`.
    pub fn add(&mut self, error: ConfigError) {
        self.found.push(error);
    }

    /// Records the error of `result`, if any, under `prefix`.
    pub fn check(&mut self, prefix: &str, result: Result<(), ConfigError>) {
        if let Err(error) = result {
            self.add(error.within(prefix));
        }
    }

    /// Runs `check`, recording what it finds under `prefix`.
    pub fn within(&mut self, prefix: &str, check: impl FnOnce(&mut Errors)) {
        let mut inner = Errors::default();
        check(&mut inner);
        self.found
            .extend(inner.found.into_iter().map(|e| e.within(prefix)));
    }

    /// The first error found, if any.
    pub fn first(self) -> Result<(), ConfigError> {
        match self.found.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Everything found, in the order it was found.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.found
    }
}
