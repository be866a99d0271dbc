//! Command implementations, one module per command group (`kv` for
//! put/get/del, `endpoint`, `member`, `benchmark`; Quorate's quorum-safety
//! commands in `health` (`cluster check`, liveness) and `replace`). Each
//! command validates its arguments and output format first (so a bad
//! invocation never reaches the server), then dials, calls, and hands the
//! response to the shared printer.
//!
//! Adding a command: parse its flags in `cli`, add a function here or in a
//! new group module taking `&mut Env`, implement `output::Render` for what
//! it prints, and route it in [`run`].

pub mod benchmark;
pub mod endpoint;
pub mod health;
pub mod kv;
pub mod lease;
pub mod member;
pub mod replace;
pub mod snapshot;
pub mod watch;

use std::io::Read;

use crate::cli::{
    self, BenchmarkCommand, ClusterCommand, Command, EndpointCommand, GlobalFlags, MemberCommand,
};
use crate::client::ClientConfig;
use crate::exit::CtlError;
use crate::output::{Out, OutputFormat, Printer};

/// Everything a command needs: connection settings, output options and the
/// process's standard streams.
pub struct Env<'a> {
    pub cfg: ClientConfig,
    write_out: String,
    hex: bool,
    pub stdin: &'a mut dyn Read,
    pub out: Out<'a>,
}

impl<'a> Env<'a> {
    pub fn new(global: &GlobalFlags, stdin: &'a mut dyn Read, out: Out<'a>) -> Self {
        Env {
            cfg: ClientConfig {
                endpoints: global.endpoints.clone(),
                dial_timeout: global.dial_timeout,
                command_timeout: global.command_timeout,
            },
            write_out: global.write_out.clone(),
            hex: global.hex,
            stdin,
            out,
        }
    }

    /// The printer for `-w`/`--hex`; an unknown format exits with code 4.
    pub fn printer(&self) -> Result<Printer, CtlError> {
        Ok(Printer::new(
            OutputFormat::parse(&self.write_out)?,
            self.hex,
        ))
    }

    fn help(&mut self, path: &[&str]) -> Result<(), CtlError> {
        self.out.stdout.write_all(cli::help(path).as_bytes())?;
        Ok(())
    }
}

/// Runs the parsed command.
pub async fn run(command: Option<Command>, env: &mut Env<'_>) -> Result<(), CtlError> {
    match command {
        None => env.help(&[]),
        Some(Command::Put(a)) => kv::put(a, env).await,
        Some(Command::Get(a)) => kv::get(a, env).await,
        Some(Command::Del(a)) => kv::del(a, env).await,
        Some(Command::Watch(a)) => watch::watch(a, env).await,
        Some(Command::Lease(a)) => lease::run(a, env).await,
        Some(Command::Snapshot(a)) => match a.command {
            Some(cli::SnapshotCommand::Save { file }) => snapshot::save(file, env).await,
            None => env.help(&["snapshot"]),
        },
        Some(Command::Endpoint(a)) => match a.command {
            None => env.help(&["endpoint"]),
            Some(EndpointCommand::Health) => endpoint::health(a.cluster, env).await,
            Some(EndpointCommand::Status) => endpoint::status(a.cluster, env).await,
        },
        Some(Command::Member(a)) => match a.command {
            None => env.help(&["member"]),
            Some(MemberCommand::List) => member::list(env).await,
            Some(MemberCommand::Add {
                name,
                peer_urls,
                learner,
            }) => member::add(name, peer_urls, learner, env).await,
            Some(MemberCommand::Remove { id }) => member::remove(id, env).await,
            Some(MemberCommand::Promote { id }) => member::promote(id, env).await,
            Some(MemberCommand::Replace(r)) => replace::replace(r, env).await,
        },
        Some(Command::Cluster(a)) => match a.command {
            None => env.help(&["cluster"]),
            Some(ClusterCommand::Check(c)) => health::check(c, env).await,
        },
        Some(Command::Benchmark(a)) => match a.command {
            None => env.help(&["benchmark"]),
            Some(BenchmarkCommand::Put(ref p)) => benchmark::put(&a, p, env).await,
            Some(BenchmarkCommand::Range(ref r)) => benchmark::range(&a, r, env).await,
        },
    }
}
