//! The store's error type, and the one place where database errors are classified.
//!
//! Callers match on the variant to choose an HTTP status or an Atlas error code; they never see a
//! `sqlx` type. Constraint violations are mapped per operation (the operation knows which
//! uniqueness or reference it was risking), because the two backends report constraint names
//! differently and the caller wants the domain meaning, not the index name.

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing addressed (or a thing it refers to) does not exist.
    #[error("not found: {what}")]
    NotFound {
        /// What was missing, in domain words ("group", "cloud provider access role in this group").
        what: &'static str,
    },
    /// A uniqueness rule would be broken, e.g. a second project with the same name in one org.
    #[error("already exists: {what}")]
    Conflict {
        /// Which rule ("group name in this organization", "API key public key", ...).
        what: &'static str,
    },
    /// The thing is still referenced and cannot be deleted (e.g. a role used by Encryption at Rest).
    #[error("in use: {what}")]
    InUse {
        /// What still refers to it.
        what: &'static str,
    },
    /// Optimistic concurrency: someone else wrote (or deleted) the row since the caller read the
    /// version it passed in. Nothing was changed; re-read and decide again.
    #[error("stale write: the record changed since it was read; nothing was written")]
    StaleWrite,
    /// The caller asked for something the store cannot represent (a bad URL, a page number of 0).
    #[error("invalid request to the store: {0}")]
    Invalid(String),
    /// The database failed or returned something the store cannot decode. The message carries
    /// the backend's text for logs; it never contains bound parameter values.
    #[error("store backend error: {0}")]
    Backend(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How one operation names the constraints it can trip.
#[derive(Clone, Copy, Default)]
pub(crate) struct Meaning {
    /// Reported as [`StoreError::Conflict`] on a unique violation.
    pub conflict: Option<&'static str>,
    /// Reported as [`StoreError::NotFound`] on a foreign key violation while inserting/updating.
    pub missing: Option<&'static str>,
    /// Reported as [`StoreError::InUse`] on a foreign key violation while deleting.
    pub in_use: Option<&'static str>,
}

impl Meaning {
    pub(crate) const NONE: Meaning = Meaning { conflict: None, missing: None, in_use: None };

    pub(crate) const fn conflict(what: &'static str) -> Meaning {
        Meaning { conflict: Some(what), missing: None, in_use: None }
    }

    pub(crate) const fn missing(what: &'static str) -> Meaning {
        Meaning { conflict: None, missing: Some(what), in_use: None }
    }

    pub(crate) const fn and_missing(self, what: &'static str) -> Meaning {
        Meaning { missing: Some(what), ..self }
    }

    pub(crate) const fn in_use(what: &'static str) -> Meaning {
        Meaning { conflict: None, missing: None, in_use: Some(what) }
    }

    /// Classifies a sqlx error for this operation.
    pub(crate) fn classify(self, err: sqlx::Error) -> StoreError {
        use sqlx::error::ErrorKind;
        if let sqlx::Error::Database(db) = &err {
            match db.kind() {
                ErrorKind::UniqueViolation => {
                    if let Some(what) = self.conflict {
                        return StoreError::Conflict { what };
                    }
                }
                ErrorKind::ForeignKeyViolation => {
                    if let Some(what) = self.in_use {
                        return StoreError::InUse { what };
                    }
                    if let Some(what) = self.missing {
                        return StoreError::NotFound { what };
                    }
                }
                _ => {}
            }
        }
        StoreError::Backend(err.to_string())
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Meaning::NONE.classify(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Backend(format!("migration failed: {err}"))
    }
}

/// A row that violates an invariant the schema should have enforced (a corrupt or hand-edited
/// database). Reported, never panicked on.
pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}"))
}
