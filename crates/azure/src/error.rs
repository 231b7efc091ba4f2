//! The one error type of this crate, classified by what the caller should do about it.
//!
//! atrest's data nodes act on the class, not on the text: a *denial* (the customer removed the
//! grant, disabled or deleted the key) stops serving after a grace period, while an *unreachable*
//! or *throttled* vault keeps serving (design.md §3.6). Every error therefore carries an
//! [`ErrorKind`], Azure's own code (`ForbiddenByRbac`, `AADSTS700016`, ...), the HTTP status and,
//! where the fix is known, a remediation the user can paste (usually an `az` command).

use std::fmt;
use std::time::Duration;

/// What kind of failure this is, from the point of view of someone holding a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller is not allowed: 401/403 from Key Vault or ARM (`ForbiddenByRbac`,
    /// `ForbiddenByPolicy`, `ForbiddenByConnection`, ...), or Entra refused the platform's
    /// credential or has no service principal for it in the tenant.
    Denied,
    /// The key, vault or resource does not exist (`KeyNotFound`, `ResourceNotFound`, ...).
    NotFound,
    /// The key exists but cannot be used now: disabled, expired, not yet valid, or the
    /// operation is not in its `key_ops`.
    Disabled,
    /// No answer: DNS, TCP, TLS, timeouts, or 5xx after retries.
    Unreachable,
    /// 429 after retries.
    Throttled,
    /// The request itself is wrong: 400s, bad identifiers, bad local configuration.
    Misconfigured,
}

impl ErrorKind {
    /// A short lowercase name (`denied`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::NotFound => "not found",
            Self::Disabled => "disabled",
            Self::Unreachable => "unreachable",
            Self::Throttled => "throttled",
            Self::Misconfigured => "misconfigured",
        }
    }

    /// Does this failure mean the customer's key is no longer usable by the platform (so a data
    /// node must stop serving after its denial grace)? Transient failures do not.
    pub fn revokes_access(self) -> bool {
        matches!(self, Self::Denied | Self::NotFound | Self::Disabled)
    }

    /// Is this a failure to reach Azure rather than an answer from it?
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unreachable | Self::Throttled)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which Azure service answered (or failed to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Entra ID's token endpoint.
    Entra,
    /// The Key Vault data plane.
    KeyVault,
    /// Azure Resource Manager.
    ResourceManager,
    /// Nothing was sent: local configuration or input was wrong.
    Local,
}

impl Service {
    /// The service's display name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entra => "Entra ID",
            Self::KeyVault => "Key Vault",
            Self::ResourceManager => "Azure Resource Manager",
            Self::Local => "local configuration",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed Azure call. Built by the module that spoke to the service, which knows its error
/// body; read through the accessors.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    service: Service,
    status: Option<u16>,
    code: Option<String>,
    message: String,
    remediation: Option<String>,
    aadsts: Option<u32>,
    /// What the server asked for in `Retry-After` (429/503), already parsed.
    pub(crate) retry_after: Option<Duration>,
    /// Whether a retry can help: 429, 5xx and connection failures. Denials and other 4xx never.
    pub(crate) retryable: bool,
    attempts: u32,
}

impl Error {
    /// A new error; `retryable` is derived from the kind (unreachable and throttled only).
    /// Public for [`crate::token::TokenSource`]s, which relay errors another process got.
    pub fn new(kind: ErrorKind, service: Service, message: impl Into<String>) -> Self {
        Self {
            kind,
            service,
            status: None,
            code: None,
            message: message.into(),
            remediation: None,
            aadsts: None,
            retry_after: None,
            retryable: kind.is_transient(),
            attempts: 1,
        }
    }

    /// A local problem found before anything was sent.
    pub(crate) fn local(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Misconfigured, Service::Local, message)
    }

    /// The HTTP status the service answered with.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Azure's error code.
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// What to do about it (an exact command, when known).
    pub fn with_remediation(mut self, remediation: impl Into<String>) -> Self {
        self.remediation = Some(remediation.into());
        self
    }

    /// The Entra AADSTS code.
    pub fn with_aadsts(mut self, code: u32) -> Self {
        self.aadsts = Some(code);
        self
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub(crate) fn set_attempts(&mut self, attempts: u32) {
        self.attempts = attempts;
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Which service failed.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The HTTP status Azure answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Azure's most specific error code: Key Vault's `innererror.code` when present
    /// (`ForbiddenByRbac`), else `error.code` (`KeyNotFound`); `AADSTS<n>` for Entra.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Azure's message (or ours, for failures to reach it).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What to do about it, when known: usually an exact `az` command.
    pub fn remediation(&self) -> Option<&str> {
        self.remediation.as_deref()
    }

    /// The Entra AADSTS code, for errors from the token endpoint.
    pub fn aadsts_code(&self) -> Option<u32> {
        self.aadsts
    }

    /// The `Retry-After` Azure sent with the last answer, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// How many attempts were made before giving up (1 when the error was not retryable).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.kind)?;
        match (self.status, &self.code) {
            (Some(s), Some(c)) => write!(f, " (HTTP {s}, {c})")?,
            (Some(s), None) => write!(f, " (HTTP {s})")?,
            (None, Some(c)) => write!(f, " ({c})")?,
            (None, None) => {}
        }
        // Azure messages use "\r\n" between fields; one line reads better in logs and events.
        let message = self.message.split(['\r', '\n']).filter(|l| !l.trim().is_empty()).collect::<Vec<_>>();
        write!(f, ": {}", message.join(" "))?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        if let Some(r) = &self.remediation {
            write!(f, ". Fix: {r}")?;
        }
        Ok(())
    }
}

/// The class of an HTTP status that no service-specific rule claimed.
pub(crate) fn kind_for_status(status: u16) -> ErrorKind {
    match status {
        401 | 403 => ErrorKind::Denied,
        404 | 410 => ErrorKind::NotFound,
        429 => ErrorKind::Throttled,
        408 | 500..=599 => ErrorKind::Unreachable,
        _ => ErrorKind::Misconfigured,
    }
}

/// Turn a reqwest failure (nothing usable came back) into an [`ErrorKind::Unreachable`] error,
/// or [`ErrorKind::Misconfigured`] when the request could not even be built.
pub(crate) fn from_transport(service: Service, err: &reqwest::Error) -> Error {
    // reqwest's Display names the URL but never headers or bodies, so no token can leak here.
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    if err.is_builder() {
        return Error::new(ErrorKind::Misconfigured, service, format!("could not build the request: {chain}"));
    }
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect (DNS, TCP or TLS)"
    } else {
        "the connection failed"
    };
    Error::new(ErrorKind::Unreachable, service, format!("{what}: {chain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(kind_for_status(401), ErrorKind::Denied);
        assert_eq!(kind_for_status(403), ErrorKind::Denied);
        assert_eq!(kind_for_status(404), ErrorKind::NotFound);
        assert_eq!(kind_for_status(429), ErrorKind::Throttled);
        assert_eq!(kind_for_status(503), ErrorKind::Unreachable);
        assert_eq!(kind_for_status(400), ErrorKind::Misconfigured);
        assert_eq!(kind_for_status(409), ErrorKind::Misconfigured);
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        for kind in [
            ErrorKind::Denied,
            ErrorKind::NotFound,
            ErrorKind::Disabled,
            ErrorKind::Unreachable,
            ErrorKind::Throttled,
            ErrorKind::Misconfigured,
        ] {
            let e = Error::new(kind, Service::KeyVault, "x");
            assert_eq!(e.retryable, matches!(kind, ErrorKind::Unreachable | ErrorKind::Throttled), "{kind}");
            assert_eq!(
                kind.revokes_access(),
                matches!(kind, ErrorKind::Denied | ErrorKind::NotFound | ErrorKind::Disabled)
            );
        }
    }

    #[test]
    fn display_is_one_line_with_code_status_and_fix() {
        let mut e =
            Error::new(ErrorKind::Denied, Service::KeyVault, "Caller is not authorized.\r\nCaller: appid=a\r\n")
                .with_status(403)
                .with_code("ForbiddenByRbac")
                .with_remediation("az role assignment create ...");
        e.set_attempts(1);
        let s = e.to_string();
        assert_eq!(
            s,
            "Key Vault denied (HTTP 403, ForbiddenByRbac): Caller is not authorized. Caller: appid=a. Fix: az role assignment create ..."
        );
    }
}
