//! quoratectl: the operator CLI. Speaks etcd's v3 gRPC API, so it works
//! against Quorate and against etcd. Placeholder until implemented.

/// Runs the CLI with the process arguments; returns the process exit code.
pub fn main_with_args(_args: Vec<String>) -> i32 {
    eprintln!("Error: quoratectl is not built yet");
    1
}
