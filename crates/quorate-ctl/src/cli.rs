//! Command-line syntax: global flags, command groups and their flags,
//! parsed with clap but made to accept what etcdctl's pflag accepts.
//!
//! Differences from clap's defaults that keep etcdctl invocations working:
//! boolean flags take an optional `=VALUE` (`--prefix=false`) in Go's
//! `ParseBool` syntax; durations use Go syntax (`500ms`, `1m30s`); every
//! global flag also reads `ETCDCTL_<FLAG>`; flag errors print etcdctl-style
//! messages and exit 1, and help goes to stdout with exit 0.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};

use crate::exit;
use crate::gofmt::{parse_bool, parse_duration, parse_i64, quote};

/// Program name used in messages.
pub const PROGRAM: &str = "quoratectl";

#[derive(Debug, Parser)]
#[command(
    name = "quoratectl",
    about = "A command line client for Quorate and etcd (v3 API), compatible with etcdctl.",
    version,
    disable_help_subcommand = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags every command accepts, before or after the command name.
#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// gRPC endpoints (comma-separated; with or without http://)
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        hide_env_values = true,
        help_heading = "Global options",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        value_name = "ENDPOINTS"
    )]
    pub endpoints: Vec<String>,

    /// dial timeout for client connections
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_DIAL_TIMEOUT",
        hide_env_values = true,
        help_heading = "Global options",
        default_value = "2s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub dial_timeout: Duration,

    /// timeout for short running command (excluding dial timeout)
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_COMMAND_TIMEOUT",
        hide_env_values = true,
        help_heading = "Global options",
        default_value = "5s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub command_timeout: Duration,

    /// set the output format (fields, json, protobuf, simple, table)
    #[arg(
        short = 'w',
        long,
        global = true,
        env = "ETCDCTL_WRITE_OUT",
        hide_env_values = true,
        help_heading = "Global options",
        default_value = "simple",
        value_name = "FORMAT"
    )]
    pub write_out: String,

    /// print byte strings as hex encoded strings
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_HEX",
        hide_env_values = true,
        help_heading = "Global options",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = parse_bool,
        value_name = "BOOL"
    )]
    pub hex: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Puts the given key into the store
    Put(PutArgs),
    /// Gets the key or a range of keys
    Get(GetArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(DelArgs),
    /// Watches events stream on keys or prefixes
    Watch(crate::commands::watch::WatchArgs),
    /// Lease related commands
    Lease(crate::commands::lease::LeaseArgs),
    /// Endpoint related commands
    Endpoint(EndpointArgs),
    /// Membership related commands
    Member(MemberArgs),
    /// Cluster safety commands (Quorate extension)
    Cluster(ClusterArgs),
    /// Manages snapshots (save)
    Snapshot(SnapshotArgs),
    /// Benchmark the server with put or range load (like etcd's benchmark tool)
    Benchmark(BenchmarkArgs),
}

/// `put [options] <key> <value>`; the value is read from stdin when omitted.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[arg(value_name = "KEY [VALUE]", value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    /// lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0", value_name = "ID")]
    pub lease: String,

    /// return the previous key-value pair before modification
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prev_kv: bool,

    /// updates the key using its current value
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub ignore_value: bool,

    /// updates the key using its current lease
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub ignore_lease: bool,
}

/// `get [options] <key> [range_end]`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(value_name = "KEY [RANGE_END]", value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    pub consistency: String,

    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    pub order: String,

    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long, default_value = "")]
    pub sort_by: String,

    /// Maximum number of results
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub limit: i64,

    /// Get keys with matching prefix
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prefix: bool,

    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub from_key: bool,

    /// Specify the kv revision
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub rev: i64,

    /// Get only the keys
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub keys_only: bool,

    /// Get only the count
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub count_only: bool,

    /// Only write values when using the "simple" output format
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub print_value_only: bool,

    /// Only keys modified at or after this revision (quoratectl extension)
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub min_mod_revision: i64,

    /// Only keys modified at or before this revision (quoratectl extension)
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub max_mod_revision: i64,

    /// Only keys created at or after this revision (quoratectl extension)
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub min_create_revision: i64,

    /// Only keys created at or before this revision (quoratectl extension)
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub max_create_revision: i64,
}

/// `del [options] <key> [range_end]`.
#[derive(Debug, Args)]
pub struct DelArgs {
    #[arg(value_name = "KEY [RANGE_END]", value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    /// delete keys with matching prefix
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prefix: bool,

    /// return deleted key-value pairs
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub prev_kv: bool,

    /// delete keys that are greater than or equal to the given key using byte compare
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub from_key: bool,
}

/// `endpoint <subcommand>`.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// use all endpoints from the cluster member list
    #[arg(long, global = true, action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub cluster: bool,

    #[command(subcommand)]
    pub command: Option<EndpointCommand>,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health,
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status,
}

/// `member <subcommand>`.
#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub command: Option<MemberCommand>,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Lists all members in the cluster
    List,
    /// Adds a member into the cluster
    Add {
        #[arg(value_name = "NAME")]
        name: String,
        /// comma separated peer URLs for the new member
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// indicates if the new member is raft learner
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_value = "false", default_missing_value = "true",
              value_parser = parse_bool, value_name = "BOOL")]
        learner: bool,
    },
    /// Removes a member from the cluster
    Remove {
        #[arg(value_name = "MEMBER_ID")]
        id: String,
    },
    /// Promotes a non-voting member in the cluster
    Promote {
        #[arg(value_name = "MEMBER_ID")]
        id: String,
    },
    /// Safely replaces a member: check, snapshot, remove, add learner, catch up, promote (Quorate extension)
    Replace(MemberReplaceArgs),
}

/// `member replace <old-member> --name NAME --peer-urls URLS [options]`.
#[derive(Debug, Args)]
pub struct MemberReplaceArgs {
    /// The member to replace: its ID in hex or its name
    #[arg(value_name = "OLD-MEMBER")]
    pub old: String,

    /// Name of the new member
    #[arg(long)]
    pub name: String,

    /// Peer URLs of the new member (comma-separated)
    #[arg(long, value_delimiter = ',', required = true)]
    pub peer_urls: Vec<String>,

    /// Remove the old member even if it is still alive
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub stop_old: bool,

    /// Treat the old member as dead (etcd, where liveness is unknown)
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub old_dead: bool,

    /// Where to save the snapshot taken before the change
    #[arg(long, value_name = "FILE")]
    pub snapshot_file: Option<String>,

    /// How long to wait for the new member to catch up and the cluster to recover
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `cluster <subcommand>`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: Option<ClusterCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Pre-flight check: is it safe to take one member down? Exit 0 only if so
    Check(ClusterCheckArgs),
}

/// `cluster check [options]`.
#[derive(Debug, Args)]
pub struct ClusterCheckArgs {
    /// What if this member (ID in hex, or name) were stopped
    #[arg(long, value_name = "MEMBER")]
    pub stop: Option<String>,

    /// What if this member (ID in hex, or name) were removed
    #[arg(long, value_name = "MEMBER")]
    pub remove: Option<String>,

    /// Directory holding snapshots (*.snap, *.db)
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<String>,

    /// Newest snapshot in --snapshot-dir must be younger than this (default 24h)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub snapshot_max_age: Option<Duration>,
}

/// `benchmark [options] put|range`: etcd's `tools/benchmark` as a
/// subcommand. The options before the load type are shared by both (and,
/// like etcd's persistent flags, may also follow it).
#[derive(Debug, Args)]
pub struct BenchmarkArgs {
    /// Total number of concurrent clients, each sending requests back to back
    #[arg(
        long,
        global = true,
        help_heading = "Benchmark options",
        default_value_t = 1,
        value_name = "N"
    )]
    pub clients: usize,

    /// Total number of gRPC connections shared by the clients (0: one per client)
    #[arg(
        long,
        global = true,
        help_heading = "Benchmark options",
        default_value_t = 0,
        value_name = "N"
    )]
    pub conns: usize,

    /// Stop sending requests after this long even if --total is not reached (0: no limit)
    #[arg(long, global = true, help_heading = "Benchmark options", default_value = "0",
          value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Use full float precision in the simple output
    #[arg(long, global = true, help_heading = "Benchmark options", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_value = "false",
          default_missing_value = "true", value_parser = parse_bool, value_name = "BOOL")]
    pub precise: bool,

    #[command(subcommand)]
    pub command: Option<BenchmarkCommand>,
}

#[derive(Debug, Subcommand)]
pub enum BenchmarkCommand {
    /// Benchmark put
    Put(BenchPutArgs),
    /// Benchmark range
    Range(BenchRangeArgs),
}

/// `benchmark put [options]`.
#[derive(Debug, Args)]
pub struct BenchPutArgs {
    /// Total number of put requests
    #[arg(long, default_value_t = 10000, value_name = "N")]
    pub total: u64,

    /// Key size of put request
    #[arg(long, default_value_t = 8, value_name = "BYTES")]
    pub key_size: usize,

    /// Value size of put request
    #[arg(long, default_value_t = 8, value_name = "BYTES")]
    pub val_size: usize,

    /// Maximum possible keys
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub key_space_size: u64,

    /// Use sequential keys
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub sequential_keys: bool,

    /// Maximum puts per second (0 is no limit)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate: u64,
}

/// `benchmark range <key> [end] [options]`.
#[derive(Debug, Args)]
pub struct BenchRangeArgs {
    #[arg(value_name = "KEY [END]", value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    /// Total number of range requests
    #[arg(long, default_value_t = 10000, value_name = "N")]
    pub total: u64,

    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    pub consistency: String,

    /// Maximum range requests per second (0 is no limit)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rate: u64,

    /// Maximum number of results to return from range request (0 is no limit)
    #[arg(long, default_value = "0", value_parser = parse_i64, allow_negative_numbers = true)]
    pub limit: i64,

    /// Only returns the count of keys
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true",
          value_parser = parse_bool, value_name = "BOOL")]
    pub count_only: bool,
}

/// The bytes of a command-line argument (keys and values may be any bytes).
pub fn arg_bytes(arg: &OsString) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        arg.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        arg.to_string_lossy().into_owned().into_bytes()
    }
}

/// Parses the arguments. On `--help`, `--version` or a syntax error, prints
/// what etcdctl would and returns the exit code instead.
pub fn parse(
    args: Vec<OsString>,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Cli, i32> {
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = write!(stdout, "{}", e.render());
                Err(exit::SUCCESS)
            }
            _ => {
                let _ = writeln!(stderr, "Error: {}", error_message(&e));
                Err(exit::ERROR)
            }
        },
    }
}

/// Help text for the root or a command group (`&["endpoint"]`), as printed
/// when a group is run without a subcommand.
pub fn help(path: &[&str]) -> String {
    let mut cmd = Cli::command().bin_name(PROGRAM);
    cmd.build();
    let mut cur = cmd;
    for name in path {
        match cur.find_subcommand(name) {
            Some(sub) => cur = sub.clone(),
            None => break,
        }
    }
    cur.render_help().to_string()
}

fn context_str(e: &clap::Error, kind: ContextKind) -> Option<String> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => v.first().cloned(),
        _ => None,
    }
}

/// The flag's long name from clap's `--flag <VALUE>` rendering.
fn flag_name(rendered: &str) -> String {
    rendered
        .split([' ', '=', '['])
        .next()
        .unwrap_or(rendered)
        .to_string()
}

/// etcdctl (cobra/pflag) wording for a clap error.
fn error_message(e: &clap::Error) -> String {
    match e.kind() {
        ErrorKind::UnknownArgument => {
            let arg = context_str(e, ContextKind::InvalidArg).unwrap_or_default();
            if let Some(rest) = arg.strip_prefix("--") {
                format!("unknown flag: --{}", flag_name(rest))
            } else if let Some(rest) = arg.strip_prefix('-') {
                let c = rest.chars().next().unwrap_or('-');
                format!("unknown shorthand flag: '{c}' in {arg}")
            } else {
                format!("unexpected argument {}", quote(arg.as_bytes()))
            }
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let arg = context_str(e, ContextKind::InvalidArg).unwrap_or_default();
            let value = context_str(e, ContextKind::InvalidValue).unwrap_or_default();
            let why = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "invalid value".to_string());
            format!(
                "invalid argument {} for {} flag: {why}",
                quote(value.as_bytes()),
                quote(flag_name(&arg).as_bytes())
            )
        }
        ErrorKind::InvalidSubcommand => {
            let sub = context_str(e, ContextKind::InvalidSubcommand).unwrap_or_default();
            format!(
                "unknown command {} for {}\nRun '{PROGRAM} --help' for usage.",
                quote(sub.as_bytes()),
                quote(PROGRAM.as_bytes())
            )
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("").trim();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(args: &[&str]) -> (i32, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let args = args.iter().map(OsString::from).collect();
        let code = parse(args, &mut out, &mut err).err().unwrap_or(-1);
        (code, String::from_utf8_lossy(&err).into_owned())
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn pflag_style_errors() {
        assert_eq!(
            parse_err(&["quoratectl", "get", "foo", "--bogus"]),
            (1, "Error: unknown flag: --bogus\n".to_string())
        );
        assert_eq!(
            parse_err(&["quoratectl", "get", "foo", "--limit", "x"]),
            (
                1,
                "Error: invalid argument \"x\" for \"--limit\" flag: strconv.ParseInt: parsing \"x\": invalid syntax\n"
                    .to_string()
            )
        );
        assert_eq!(
            parse_err(&["quoratectl", "--dial-timeout", "x", "get", "foo"]),
            (
                1,
                "Error: invalid argument \"x\" for \"--dial-timeout\" flag: time: invalid duration \"x\"\n"
                    .to_string()
            )
        );
        assert_eq!(
            parse_err(&["quoratectl", "foo"]),
            (
                1,
                "Error: unknown command \"foo\" for \"quoratectl\"\nRun 'quoratectl --help' for usage.\n"
                    .to_string()
            )
        );
    }

    #[test]
    fn bool_flags_take_optional_values() {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let args = [
            "quoratectl",
            "get",
            "--prefix=false",
            "--keys-only",
            "a",
            "--hex=true",
        ];
        let cli = parse(
            args.iter().map(OsString::from).collect(),
            &mut out,
            &mut err,
        )
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&err)));
        assert!(cli.global.hex);
        match cli.command {
            Some(Command::Get(g)) => {
                assert!(!g.prefix);
                assert!(g.keys_only);
                assert_eq!(g.args, vec![OsString::from("a")]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `snapshot save <filename>`
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: Option<SnapshotCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Stores a snapshot of one member's store to a file (verified, written atomically)
    Save {
        #[arg(value_name = "FILENAME")]
        file: String,
    },
}
