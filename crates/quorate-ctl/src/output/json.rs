//! A small JSON object writer that reproduces Go's `encoding/json` output
//! for etcd's generated protobuf structs: fields in declaration order, Go
//! field names as keys, `omitempty` on every protobuf field, `[]byte` as
//! standard base64, 64-bit integers as plain decimal numbers.

use base64::Engine as _;

use crate::gofmt::json_string;

/// Builds one JSON object; the `*` methods without `_always` skip zero
/// values like Go's `omitempty`.
#[derive(Debug, Default)]
pub struct JsonObject {
    buf: String,
}

impl JsonObject {
    pub fn new() -> Self {
        JsonObject::default()
    }

    fn key(&mut self, key: &str) {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        self.buf.push_str(&json_string(key));
        self.buf.push(':');
    }

    /// A value that is already JSON.
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// A nested object that Go would omit when its pointer is nil.
    pub fn object(&mut self, key: &str, json: Option<String>) -> &mut Self {
        if let Some(j) = json {
            self.raw(key, &j);
        }
        self
    }

    pub fn u64(&mut self, key: &str, v: u64) -> &mut Self {
        if v != 0 {
            self.raw(key, &v.to_string());
        }
        self
    }

    pub fn i64(&mut self, key: &str, v: i64) -> &mut Self {
        if v != 0 {
            self.raw(key, &v.to_string());
        }
        self
    }

    pub fn bool(&mut self, key: &str, v: bool) -> &mut Self {
        if v {
            self.raw(key, "true");
        }
        self
    }

    pub fn bool_always(&mut self, key: &str, v: bool) -> &mut Self {
        self.raw(key, if v { "true" } else { "false" })
    }

    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        if !v.is_empty() {
            self.str_always(key, v);
        }
        self
    }

    pub fn str_always(&mut self, key: &str, v: &str) -> &mut Self {
        self.raw(key, &json_string(v))
    }

    /// `[]byte`: base64, omitted when empty.
    pub fn bytes(&mut self, key: &str, v: &[u8]) -> &mut Self {
        if !v.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(v);
            self.raw(key, &json_string(&b64));
        }
        self
    }

    /// `[]string`, omitted when empty.
    pub fn strs(&mut self, key: &str, v: &[String]) -> &mut Self {
        if !v.is_empty() {
            let items: Vec<String> = v.iter().map(|s| json_string(s)).collect();
            self.array(key, items);
        }
        self
    }

    /// A slice of already-encoded values, omitted when empty.
    pub fn array(&mut self, key: &str, items: Vec<String>) -> &mut Self {
        if !items.is_empty() {
            let joined = array(items);
            self.raw(key, &joined);
        }
        self
    }

    pub fn finish(&mut self) -> String {
        let mut s = std::mem::take(&mut self.buf);
        if s.is_empty() {
            s.push('{');
        }
        s.push('}');
        s
    }
}

/// A JSON array of already-encoded values (`[]` when empty, as Go prints a
/// non-nil empty slice).
pub fn array(items: Vec<String>) -> String {
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitempty_and_order() {
        let s = JsonObject::new()
            .u64("a", 0)
            .u64("b", 2)
            .bytes("k", b"foo")
            .bool("x", false)
            .bool_always("h", false)
            .finish();
        assert_eq!(s, r#"{"b":2,"k":"Zm9v","h":false}"#);
        assert_eq!(JsonObject::new().finish(), "{}");
    }
}
