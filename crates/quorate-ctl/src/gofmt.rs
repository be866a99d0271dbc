//! Go-compatible formatting and parsing.
//!
//! etcdctl is a Go program, and operators' scripts depend on the exact text it
//! prints and accepts. This module reproduces the few pieces of Go's standard
//! library that show through: `strconv.Quote` (the `fields` format's `%q`),
//! `time.Duration.String` (health "took"), `humanize.Bytes` (DB SIZE),
//! `time.ParseDuration` and `strconv.ParseBool`/`ParseInt` (flag values), and
//! `encoding/json` string escaping.

use std::fmt::Write as _;
use std::time::Duration;

const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Go's `strconv.Quote(string(b))` as etcdctl 3.5's Go (1.16) prints it:
/// printable runes stay, `\a\b\f\n\r\t\v`, `\"` and `\\` are escaped, other
/// bytes below 0x20 and invalid UTF-8 bytes become `\xNN`, other
/// non-printable runes `\uNNNN` / `\UNNNNNNNN`.
pub fn quote(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() + 2);
    out.push('"');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            quote_rune(&mut out, c);
        }
        for &byte in chunk.invalid() {
            push_hex_byte(&mut out, byte);
        }
    }
    out.push('"');
    out
}

fn push_hex_byte(out: &mut String, byte: u8) {
    out.push_str("\\x");
    out.push(LOWER_HEX[(byte >> 4) as usize] as char);
    out.push(LOWER_HEX[(byte & 0xf) as usize] as char);
}

fn quote_rune(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        c if (c as u32) < 0x20 => push_hex_byte(out, c as u8),
        c if is_print(c) => out.push(c),
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// Approximates Go's `unicode.IsPrint`: letters, marks, numbers, punctuation,
/// symbols and the ASCII space. Without Unicode tables, unassigned code points
/// count as printable; controls, separators other than U+0020, the common
/// format characters and private-use areas do not.
fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x80 {
        return (0x20..0x7f).contains(&u);
    }
    !(matches!(u,
        0x80..=0xa0
        | 0xad
        | 0x600..=0x605
        | 0x61c
        | 0x6dd
        | 0x70f
        | 0x1680
        | 0x180e
        | 0x2000..=0x200f
        | 0x2028..=0x202f
        | 0x205f..=0x2064
        | 0x2066..=0x206f
        | 0x3000
        | 0xd800..=0xf8ff
        | 0xfeff
        | 0xfff9..=0xfffb
        | 0xfffe..=0xffff
        | 0x110bd
        | 0x1bca0..=0x1bca3
        | 0x1d173..=0x1d17a
        | 0xe0001
        | 0xe0020..=0xe007f
        | 0xf0000..=0x10ffff)
        || (u & 0xfffe) == 0xfffe)
}

/// Go's `encoding/json` string encoding (with its default HTML escaping):
/// `<`, `>`, `&`, U+2028 and U+2029 become `\u` escapes, invalid UTF-8
/// becomes U+FFFD.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// [`json_string`] for bytes that may not be UTF-8 (Go replaces bad bytes).
pub fn json_string_lossy(b: &[u8]) -> String {
    json_string(&String::from_utf8_lossy(b))
}

/// etcdctl's `--hex` rendering of a key or value: `\x` before every byte.
pub fn hex_escaped(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 4);
    for &byte in b {
        push_hex_byte(&mut out, byte);
    }
    out
}

/// Go's `time.Duration.String()`, e.g. `1.255543ms`, `699.357µs`, `5.0012s`,
/// `1m30s`.
pub fn duration(d: Duration) -> String {
    let u = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if u == 0 {
        return "0s".to_string();
    }
    if u < 1_000_000_000 {
        let (prec, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "µs")
        } else {
            (6, "ms")
        };
        let (frac, int) = frac_digits(u, prec);
        return format!("{int}{frac}{unit}");
    }
    let (frac, secs) = frac_digits(u, 9);
    let mut out = String::new();
    let mins = secs / 60;
    if mins > 0 {
        let hours = mins / 60;
        if hours > 0 {
            let _ = write!(out, "{hours}h");
        }
        let _ = write!(out, "{}m", mins % 60);
    }
    let _ = write!(out, "{}{frac}s", secs % 60);
    out
}

/// Splits `v` into `(".fraction", v / 10^prec)` with trailing zeros (and an
/// empty fraction's point) dropped, like Go's `fmtFrac`.
fn frac_digits(v: u64, prec: u32) -> (String, u64) {
    if prec == 0 {
        return (String::new(), v);
    }
    let div = 10u64.pow(prec);
    let frac = v % div;
    if frac == 0 {
        return (String::new(), v / div);
    }
    let digits = format!("{frac:0width$}", width = prec as usize);
    (format!(".{}", digits.trim_end_matches('0')), v / div)
}

/// `humanize.Bytes`: SI units with one decimal below 10, e.g. `20 kB`, `1.2 MB`.
pub fn humanize_bytes(s: u64) -> String {
    if s < 10 {
        return format!("{s} B");
    }
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let f = s as f64;
    let e = (f.ln() / 1000f64.ln()).floor();
    let idx = (e as usize).min(SIZES.len() - 1);
    let val = (f / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", SIZES[idx])
    } else {
        format!("{val:.0} {}", SIZES[idx])
    }
}

/// Go's `time.ParseDuration` (`300ms`, `2s`, `1m30s`, `1.5h`, `0`); errors
/// read like Go's. Negative durations are accepted and clamp to zero.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", quote(input.as_bytes()));
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let mut frac_part = "";
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!(
                "time: missing unit in duration {}",
                quote(input.as_bytes())
            ));
        }
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit.as_bytes()),
                    quote(input.as_bytes())
                ))
            }
        };
        let number: f64 = format!(
            "{}.{}",
            if int_part.is_empty() { "0" } else { int_part },
            if frac_part.is_empty() { "0" } else { frac_part }
        )
        .parse()
        .map_err(|_| invalid())?;
        total += number * scale;
        s = after;
    }
    if negative || !total.is_finite() {
        return Ok(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Go's `strconv.ParseBool`, which is what pflag accepts for `--flag=VALUE`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!(
            "strconv.ParseBool: parsing {}: invalid syntax",
            quote(s.as_bytes())
        )),
    }
}

/// Go's `strconv.ParseInt(s, base, 64)`, with Go's error text.
pub fn parse_int(s: &str, base: u32) -> Result<i64, String> {
    i64::from_str_radix(s, base).map_err(|e| {
        let why = match e.kind() {
            std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                "value out of range"
            }
            _ => "invalid syntax",
        };
        format!("strconv.ParseInt: parsing {}: {why}", quote(s.as_bytes()))
    })
}

/// `parse_int` in base 10, as a clap value parser.
pub fn parse_i64(s: &str) -> Result<i64, String> {
    // Go accepts a leading '+', and so does from_str_radix.
    parse_int(s, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        assert_eq!(quote(b"foo"), "\"foo\"");
        assert_eq!(
            quote("w\u{ff}".as_bytes()),
            "\"w\u{ff}\"",
            "printable latin-1 stays"
        );
        assert_eq!(
            quote(b"w\xff\x01\"<&>\xe2\x80\xa8\xc3\xa9\ttab"),
            "\"w\\xff\\x01\\\"<&>\\u2028é\\ttab\""
        );
        assert_eq!(
            quote("v\nnl\u{7f}\u{a0}\u{200b}".as_bytes()),
            "\"v\\nnl\\u007f\\u00a0\\u200b\""
        );
    }

    #[test]
    fn json_string_matches_go() {
        assert_eq!(
            json_string("a<b>&\"\\\n\u{1}"),
            r#""a\u003cb\u003e\u0026\"\\\n\u0001""#
        );
        assert_eq!(json_string_lossy(b"\xff"), "\"\u{fffd}\"");
    }

    #[test]
    fn duration_matches_go() {
        let d = Duration::from_nanos;
        assert_eq!(duration(d(0)), "0s");
        assert_eq!(duration(d(999)), "999ns");
        assert_eq!(duration(d(699_357)), "699.357µs");
        assert_eq!(duration(d(1_255_543)), "1.255543ms");
        assert_eq!(duration(d(2_000_000)), "2ms");
        assert_eq!(duration(d(5_001_215_729)), "5.001215729s");
        assert_eq!(duration(d(90_000_000_000)), "1m30s");
        assert_eq!(duration(d(3_600_000_000_000)), "1h0m0s");
    }

    #[test]
    fn humanize_matches_go() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(1234), "1.2 kB");
        assert_eq!(humanize_bytes(1_500_000), "1.5 MB");
        assert_eq!(humanize_bytes(25_000_000), "25 MB");
    }

    #[test]
    fn parse_duration_matches_go() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(
            parse_duration("x"),
            Err("time: invalid duration \"x\"".to_string())
        );
        assert_eq!(
            parse_duration("5"),
            Err("time: missing unit in duration \"5\"".to_string())
        );
        assert_eq!(
            parse_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".to_string())
        );
    }

    #[test]
    fn parse_int_matches_go() {
        assert_eq!(parse_int("1234abcd", 16), Ok(0x1234abcd));
        assert_eq!(
            parse_int("zzz", 16),
            Err("strconv.ParseInt: parsing \"zzz\": invalid syntax".to_string())
        );
        assert_eq!(
            parse_int("ffffffffffffffffff", 16),
            Err("strconv.ParseInt: parsing \"ffffffffffffffffff\": value out of range".to_string())
        );
    }
}
