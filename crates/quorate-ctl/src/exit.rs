//! Errors and process exit codes.
//!
//! Every failure in quoratectl is a [`CtlError`]: an etcdctl exit code plus
//! the message printed as `Error: <message>` on stderr. gRPC statuses are
//! turned into the text etcdctl's Go client shows for them, so scripts that
//! match on etcd's error strings keep working.

use std::fmt;

/// Command succeeded.
pub const SUCCESS: i32 = 0;
/// Generic failure (request rejected, timeout, unhealthy endpoint, flag syntax).
pub const ERROR: i32 = 1;
/// Could not connect to any endpoint.
pub const BAD_CONNECTION: i32 = 2;
/// Input that is well-formed but not acceptable.
pub const INVALID_INPUT: i32 = 3;
/// Unsupported feature, output format or option value.
pub const BAD_FEATURE: i32 = 4;
/// Interrupted (Ctrl-C).
pub const INTERRUPTED: i32 = 5;
/// Local I/O failed (writing output, reading or writing files).
pub const IO: i32 = 6;
/// Wrong positional arguments or incompatible flags.
pub const BAD_ARGS: i32 = 128;

/// A failure with the exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    pub code: i32,
    pub message: String,
    /// The command already reported the problem (etcdctl exits without an
    /// `Error:` line in a few places, e.g. `endpoint status`).
    pub silent: bool,
}

impl CtlError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CtlError {
            code,
            message: message.into(),
            silent: false,
        }
    }

    /// Exit with `code` without printing anything more.
    pub fn silent(code: i32) -> Self {
        CtlError {
            code,
            message: String::new(),
            silent: true,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self::new(ERROR, message)
    }

    pub fn bad_args(message: impl Into<String>) -> Self {
        Self::new(BAD_ARGS, message)
    }

    pub fn bad_feature(message: impl Into<String>) -> Self {
        Self::new(BAD_FEATURE, message)
    }

    pub fn bad_connection(message: impl Into<String>) -> Self {
        Self::new(BAD_CONNECTION, message)
    }

    /// The deadline of `--command-timeout` passed (Go's context error text).
    pub fn deadline_exceeded() -> Self {
        Self::error("context deadline exceeded")
    }

    pub fn interrupted() -> Self {
        Self::new(INTERRUPTED, "interrupted")
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            // The reader went away (`| head`); nothing useful to say.
            CtlError::silent(IO)
        } else {
            CtlError::new(IO, e.to_string())
        }
    }
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        let mut msg = status_message(&s);
        // Quorate explains refusals whose message must stay etcd's exact
        // string (clients match it) in the `quorate-detail` metadata.
        if let Some(detail) = s
            .metadata()
            .get("quorate-detail")
            .and_then(|v| v.to_str().ok())
        {
            msg.push_str(&format!(" ({detail})"));
        }
        CtlError::error(msg)
    }
}

/// The text etcdctl prints for a failed RPC: etcd's own errors (all
/// `etcdserver: ...`) verbatim, deadline/cancel as Go's context errors,
/// anything else as grpc-go formats a status.
pub fn status_message(s: &tonic::Status) -> String {
    use tonic::Code;
    let msg = s.message();
    if msg.starts_with("etcdserver: ") {
        return msg.to_string();
    }
    match s.code() {
        Code::DeadlineExceeded => "context deadline exceeded".to_string(),
        // tonic's client-side enforcement of the request's grpc-timeout.
        Code::Cancelled if msg == "Timeout expired" => "context deadline exceeded".to_string(),
        Code::Cancelled => "context canceled".to_string(),
        code => format!("rpc error: code = {} desc = {}", go_code_name(code), msg),
    }
}

/// grpc-go's names for status codes (`codes.Code.String()`).
fn go_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_are_printed_verbatim() {
        let s =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision is a future revision");
        assert_eq!(
            status_message(&s),
            "etcdserver: mvcc: required revision is a future revision"
        );
        let s = tonic::Status::unavailable("connection reset");
        assert_eq!(
            status_message(&s),
            "rpc error: code = Unavailable desc = connection reset"
        );
        let s = tonic::Status::deadline_exceeded("timeout expired");
        assert_eq!(status_message(&s), "context deadline exceeded");
        let s = tonic::Status::cancelled("Timeout expired");
        assert_eq!(status_message(&s), "context deadline exceeded");
    }
}
