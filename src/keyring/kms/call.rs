//! Classifying KMS errors into the crate's typed errors.

use std::fmt;

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::{Error, KeyringErrorKind};

/// How one failed KMS attempt is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The attempt timed out (no answer within the attempt timeout).
    Timeout,
    /// No usable answer: connection refused or reset, KMS internal error,
    /// dependency timeout, HTTP 5xx. Retryable.
    Unavailable { code: String, message: String },
    /// ThrottlingException. Retryable.
    Throttled { message: String },
    /// KMS answered and refused. Not retryable.
    Refused {
        kind: KeyringErrorKind,
        code: String,
        message: String,
    },
}

impl Failure {
    pub fn retryable(&self) -> bool {
        !matches!(self, Failure::Refused { .. })
    }

    /// Short outcome label for the audit event.
    pub fn outcome(&self) -> &str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unavailable { code, .. } if code.is_empty() => "unavailable",
            Failure::Unavailable { code, .. } => code,
            Failure::Throttled { .. } => "ThrottlingException",
            Failure::Refused { code, .. } => code,
        }
    }

    /// The crate error for an operation that ended with this failure.
    pub fn into_error(self, op: &'static str, master_key: &str, attempts: u32) -> Error {
        let master_key = master_key.to_owned();
        match self {
            Failure::Timeout => Error::KeyringUnavailable {
                message: format!("KMS {op} timed out ({attempts} attempt(s))"),
                source: None,
                master_key,
            },
            Failure::Unavailable { code, message } => Error::KeyringUnavailable {
                message: format!("KMS {op} failed ({attempts} attempt(s)): {message}"),
                source: Some(Box::new(KmsCallError { op, code, message })),
                master_key,
            },
            Failure::Throttled { message } => Error::Keyring {
                kind: KeyringErrorKind::Throttled,
                source: Some(Box::new(KmsCallError {
                    op,
                    code: "ThrottlingException".into(),
                    message,
                })),
                master_key,
            },
            Failure::Refused {
                kind,
                code,
                message,
            } => Error::Keyring {
                kind,
                source: Some(Box::new(KmsCallError { op, code, message })),
                master_key,
            },
        }
    }
}

/// The KMS error behind a keyring error: operation, error code and the
/// service's message (never request or response payloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsCallError {
    /// The KMS operation.
    pub op: &'static str,
    /// The KMS error code (e.g. `DisabledException`), empty for transport errors.
    pub code: String,
    /// The message.
    pub message: String,
}

impl fmt::Display for KmsCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            write!(f, "KMS {}: {}", self.op, self.message)
        } else {
            write!(f, "KMS {}: {}: {}", self.op, self.code, self.message)
        }
    }
}

impl std::error::Error for KmsCallError {}

/// Map a KMS error code to how it is treated.
pub(crate) fn classify_code(code: &str, status: Option<u16>, message: String) -> Failure {
    let refused = |kind| Failure::Refused {
        kind,
        code: code.to_owned(),
        message: message.clone(),
    };
    match code {
        "ThrottlingException"
        | "Throttling"
        | "ThrottledException"
        | "TooManyRequestsException"
        | "RequestLimitExceeded" => Failure::Throttled { message },
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "InternalFailure"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "RequestTimeout"
        | "RequestTimeoutException" => Failure::Unavailable {
            code: code.to_owned(),
            message,
        },
        "AccessDeniedException"
        | "IncorrectKeyException"
        | "InvalidGrantTokenException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "UnauthorizedException" => refused(KeyringErrorKind::AccessDenied),
        "InvalidCiphertextException" => refused(KeyringErrorKind::InvalidCiphertext),
        "DisabledException" | "KMSInvalidStateException" => refused(KeyringErrorKind::KeyDisabled),
        "NotFoundException" => refused(KeyringErrorKind::KeyNotFound),
        _ if status.is_some_and(|s| s >= 500) => Failure::Unavailable {
            code: code.to_owned(),
            message,
        },
        _ => refused(KeyringErrorKind::Other),
    }
}

/// Classify an SDK error.
pub(crate) fn classify<E>(e: &SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Failure::Unavailable {
            code: String::new(),
            message: DisplayErrorContext(e).to_string(),
        },
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = e.code().unwrap_or("").to_owned();
            let message = e.message().unwrap_or("").to_owned();
            classify_code(&code, Some(status), message)
        }
        _ => Failure::Refused {
            kind: KeyringErrorKind::Other,
            code: String::new(),
            message: DisplayErrorContext(e).to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_typed_kinds() {
        let k = |code: &str| classify_code(code, Some(400), "m".into());
        assert!(matches!(
            k("ThrottlingException"),
            Failure::Throttled { .. }
        ));
        for c in [
            "KMSInternalException",
            "DependencyTimeoutException",
            "KeyUnavailableException",
        ] {
            assert!(matches!(k(c), Failure::Unavailable { .. }), "{c}");
        }
        let kind = |code: &str| match k(code) {
            Failure::Refused { kind, .. } => kind,
            other => panic!("{code}: {other:?}"),
        };
        assert_eq!(
            kind("AccessDeniedException"),
            KeyringErrorKind::AccessDenied
        );
        assert_eq!(
            kind("IncorrectKeyException"),
            KeyringErrorKind::AccessDenied
        );
        assert_eq!(
            kind("InvalidCiphertextException"),
            KeyringErrorKind::InvalidCiphertext
        );
        assert_eq!(kind("DisabledException"), KeyringErrorKind::KeyDisabled);
        assert_eq!(
            kind("KMSInvalidStateException"),
            KeyringErrorKind::KeyDisabled
        );
        assert_eq!(kind("NotFoundException"), KeyringErrorKind::KeyNotFound);
        assert_eq!(kind("ValidationException"), KeyringErrorKind::Other);
        assert!(matches!(
            classify_code("Whatever", Some(503), String::new()),
            Failure::Unavailable { .. }
        ));
    }

    #[test]
    fn final_errors_are_typed_and_retryability_is_right() {
        let e = Failure::Timeout.into_error("Decrypt", "arn:k", 3);
        assert!(matches!(e, Error::KeyringUnavailable { .. }) && e.is_retryable());
        let e = Failure::Throttled {
            message: "slow down".into(),
        }
        .into_error("Decrypt", "arn:k", 3);
        assert!(
            matches!(
                e,
                Error::Keyring {
                    kind: KeyringErrorKind::Throttled,
                    ..
                }
            ) && e.is_retryable()
        );
        let e = classify_code("DisabledException", Some(400), "x".into())
            .into_error("Decrypt", "arn:k", 1);
        assert!(
            matches!(
                e,
                Error::Keyring {
                    kind: KeyringErrorKind::KeyDisabled,
                    ..
                }
            ) && !e.is_retryable()
        );
    }
}
