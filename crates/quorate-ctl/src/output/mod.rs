//! Output: the `-w/--write-out` formats and the printer that drives them.
//!
//! Each command's result type implements [`Render`], one method per format
//! it supports, and lists those formats in [`Render::FORMATS`] so a command
//! can refuse an unsupported format *before* it sends a request. The
//! [`Printer`] picks the method for the chosen format. Helpers for the
//! formats live in the submodules: [`json`] (Go `encoding/json` lookalike),
//! [`table`] (etcdctl's ASCII tables) and [`messages`] (the JSON/fields/simple
//! forms of protobuf messages several commands share).

pub mod json;
pub mod messages;
pub mod table;

use std::io::Write;

use crate::exit::{CtlError, BAD_ARGS};

/// The `-w/--write-out` values etcdctl knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Simple,
    Json,
    Protobuf,
    Fields,
    Table,
}

impl OutputFormat {
    /// Parses `-w`; unknown names are a "bad feature" like in etcdctl.
    pub fn parse(s: &str) -> Result<Self, CtlError> {
        match s {
            "simple" => Ok(OutputFormat::Simple),
            "json" => Ok(OutputFormat::Json),
            "protobuf" => Ok(OutputFormat::Protobuf),
            "fields" => Ok(OutputFormat::Fields),
            "table" => Ok(OutputFormat::Table),
            _ => Err(CtlError::bad_feature("unsupported output format")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Simple => "simple",
            OutputFormat::Json => "json",
            OutputFormat::Protobuf => "protobuf",
            OutputFormat::Fields => "fields",
            OutputFormat::Table => "table",
        }
    }
}

/// etcdctl's error for a format a command cannot print.
pub fn unsupported(format: OutputFormat) -> CtlError {
    CtlError::bad_feature(format!("{} not supported as output format", format.name()))
}

/// Where a command writes: stdout for results, stderr for per-item problems
/// (the final `Error: ...` line is written by the caller).
pub struct Out<'a> {
    pub stdout: &'a mut dyn Write,
    pub stderr: &'a mut dyn Write,
}

/// Printing options shared by all formats.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
    /// `--hex`: keys/values as `\x..` in simple output, IDs in hex in JSON
    /// member lists.
    pub hex: bool,
    /// `get --print-value-only`.
    pub value_only: bool,
}

impl Printer {
    pub fn new(format: OutputFormat, hex: bool) -> Self {
        Printer {
            format,
            hex,
            value_only: false,
        }
    }

    /// Fails with etcdctl's error if `R` cannot be printed in this format.
    pub fn check<R: Render + ?Sized>(&self) -> Result<(), CtlError> {
        if R::FORMATS.contains(&self.format) {
            Ok(())
        } else {
            Err(unsupported(self.format))
        }
    }

    /// Fails unless the format is `simple` (`--print-value-only`).
    pub fn require_simple(&self, flag: &str) -> Result<(), CtlError> {
        if self.format == OutputFormat::Simple {
            Ok(())
        } else {
            Err(CtlError::new(
                BAD_ARGS,
                format!("{flag} is only for `--write-out=simple`"),
            ))
        }
    }

    /// Prints `r` in the chosen format.
    pub fn print<R: Render + ?Sized>(&self, r: &R, out: &mut Out<'_>) -> Result<(), CtlError> {
        self.check::<R>()?;
        match self.format {
            OutputFormat::Simple => r.simple(self, out),
            OutputFormat::Json => {
                let s = r.json(self)?;
                out.stdout.write_all(s.as_bytes())?;
                out.stdout.write_all(b"\n")?;
                Ok(())
            }
            OutputFormat::Protobuf => {
                let b = r.protobuf()?;
                out.stdout.write_all(&b)?;
                Ok(())
            }
            OutputFormat::Fields => r.fields(self, out),
            OutputFormat::Table => {
                let t = r.table(self)?;
                out.stdout.write_all(t.render().as_bytes())?;
                Ok(())
            }
        }
    }
}

/// A command result that can be printed. Implement the methods for the
/// formats listed in `FORMATS`; the defaults report "not supported".
pub trait Render {
    /// The formats this result supports.
    const FORMATS: &'static [OutputFormat];

    fn simple(&self, _p: &Printer, _out: &mut Out<'_>) -> Result<(), CtlError> {
        Err(unsupported(OutputFormat::Simple))
    }

    /// One line of JSON, without the trailing newline.
    fn json(&self, _p: &Printer) -> Result<String, CtlError> {
        Err(unsupported(OutputFormat::Json))
    }

    /// The raw protobuf encoding of the response.
    fn protobuf(&self) -> Result<Vec<u8>, CtlError> {
        Err(unsupported(OutputFormat::Protobuf))
    }

    fn fields(&self, _p: &Printer, _out: &mut Out<'_>) -> Result<(), CtlError> {
        Err(unsupported(OutputFormat::Fields))
    }

    fn table(&self, _p: &Printer) -> Result<table::Table, CtlError> {
        Err(unsupported(OutputFormat::Table))
    }
}

/// Formats a response supporting everything but tables (the KV commands).
pub const ALL_BUT_TABLE: &[OutputFormat] = &[
    OutputFormat::Simple,
    OutputFormat::Json,
    OutputFormat::Protobuf,
    OutputFormat::Fields,
];

/// All formats.
pub const ALL: &[OutputFormat] = &[
    OutputFormat::Simple,
    OutputFormat::Json,
    OutputFormat::Protobuf,
    OutputFormat::Fields,
    OutputFormat::Table,
];

/// All formats but protobuf (results that are not one protobuf message).
pub const ALL_BUT_PROTOBUF: &[OutputFormat] = &[
    OutputFormat::Simple,
    OutputFormat::Json,
    OutputFormat::Fields,
    OutputFormat::Table,
];
