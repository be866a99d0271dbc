//! quoratectl: the operator CLI. Speaks etcd's v3 gRPC API, so it works
//! against Quorate and against etcd, and copies etcdctl 3.5's commands,
//! flags, output formats and exit codes so existing scripts keep working.
//!
//! Layout:
//! - [`cli`]: flag and command syntax (clap, made to behave like pflag);
//! - [`commands`]: one module per command group;
//! - [`output`]: the `-w` formats and the printer every command uses;
//! - [`client`]: dialing endpoints and unary calls with etcdctl's timeouts;
//! - [`exit`]: errors, exit codes, gRPC status → message mapping;
//! - [`gofmt`]: Go formatting/parsing details that show in the output.

pub mod cli;
pub mod client;
pub mod commands;
pub mod exit;
pub mod gofmt;
pub mod output;

use std::ffi::OsString;
use std::io::{Read, Write};

use commands::Env;
use exit::CtlError;
use output::Out;

/// Runs the CLI with the process arguments; returns the process exit code.
pub fn main_with_args(args: Vec<String>) -> i32 {
    main_with_args_os(args.into_iter().map(OsString::from).collect())
}

/// Like [`main_with_args`], for `std::env::args_os()`: keys and values that
/// are not UTF-8 reach the server unchanged.
pub fn main_with_args_os(args: Vec<OsString>) -> i32 {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    // Not locked for the whole run (stderr is unbuffered, so nothing else
    // changes): `benchmark` draws its progress bar from worker threads.
    run(
        args,
        &mut stdin.lock(),
        &mut stdout.lock(),
        &mut std::io::stderr(),
    )
}

/// Runs the CLI against the given streams; returns the exit code.
pub fn run(
    args: Vec<OsString>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let cli = match cli::parse(args, stdout, stderr) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // One call at a time needs one thread; the load generator needs them all.
    let mut builder = if matches!(cli.command, Some(cli::Command::Benchmark(_))) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(stderr, "Error: {e}");
            return exit::ERROR;
        }
    };
    let mut env = Env::new(&cli.global, stdin, Out { stdout, stderr });
    let result = runtime.block_on(async {
        // Install the SIGINT handler before the command dials anything, so
        // an interrupt at any moment exits with code 5.
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        let interrupted = async {
            match interrupt.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = interrupted => Err(CtlError::interrupted()),
            r = commands::run(cli.command, &mut env) => r,
        }
    });
    let result = result.and_then(|()| env.out.stdout.flush().map_err(CtlError::from));
    match result {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            let _ = env.out.stdout.flush();
            if !e.silent {
                let _ = writeln!(env.out.stderr, "Error: {}", e.message);
            }
            e.code
        }
    }
}
