//! Streaming output for the listing commands (`status`, `backups list`): a fleet has thousands
//! of rows, so they are printed as they are read instead of after the last one.
//!
//! [`PrettyObject`] writes a JSON object field by field, an array field element by element,
//! byte-identical to `serde_json::to_string_pretty` of the whole document (the `--json` shapes
//! are documented contracts). Each value is pretty-printed on its own and re-indented to its
//! depth: a raw newline in serde_json's pretty output is always structure (newlines inside
//! strings are escaped), so every one of them is followed by the depth's indentation.
//!
//! [`Stop`] and [`finish`] turn the ways a streaming command can stop into its result: a
//! closed pipe (`litekeeper status | head -1`) ends it quietly.

use std::io::{self, Write};

use serde::Serialize;

use crate::exit::{ExitCode, Failure};

/// serde_json's pretty indentation (`PrettyFormatter::new()`).
const INDENT: &[u8] = b"  ";

/// Why a streaming command stopped early.
#[derive(Debug)]
pub enum Stop {
    /// Writing the output failed (closed pipe, full disk…).
    Write(io::Error),
    /// A value could not be serialized.
    Json(serde_json::Error),
    /// The command itself failed (reading the state DB, a backup directory…).
    Fail(Failure),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Write(e)
    }
}

impl From<serde_json::Error> for Stop {
    fn from(e: serde_json::Error) -> Self {
        Stop::Json(e)
    }
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

/// The command's result: a closed pipe is a quiet success (the reader has what it wanted),
/// another write error is an I/O error, a serialization error fails as it always did.
pub fn finish(result: Result<(), Stop>) -> Result<ExitCode, Failure> {
    match result {
        Ok(()) => Ok(ExitCode::Ok),
        Err(Stop::Write(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::Ok),
        Err(Stop::Write(e)) => Err(Failure::new(
            ExitCode::IoErr,
            anyhow::anyhow!("cannot write to standard output: {e}"),
        )),
        Err(Stop::Json(e)) => Err(Failure::new(ExitCode::Failed, e)),
        Err(Stop::Fail(f)) => Err(f),
    }
}

/// Standard output for a streaming command: buffered (a fleet's listing is megabytes, and
/// stdout alone writes line by line), pushed to the reader by the command's explicit flushes.
pub fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::with_capacity(64 * 1024, io::stdout().lock())
}

/// A pretty-printed JSON object being written field by field (see the module docs).
/// Nothing is written before the first field; [`PrettyObject::end`] closes it.
pub struct PrettyObject<W: Write> {
    out: W,
    fields: usize,
    buf: Vec<u8>,
}

impl<W: Write> PrettyObject<W> {
    pub fn new(out: W) -> Self {
        PrettyObject {
            out,
            fields: 0,
            buf: Vec::new(),
        }
    }

    /// `"key": value`, the value pretty-printed at depth 1.
    pub fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Stop> {
        self.buf.clear();
        // Serialize first: a value that cannot be serialized leaves no half field behind.
        serde_json::to_writer_pretty(&mut self.buf, value)?;
        self.key(key)?;
        write_indented(&mut self.out, &self.buf, 1)?;
        Ok(())
    }

    /// `"key": [`, then the elements one by one ([`PrettyArray::item`]).
    pub fn array(mut self, key: &str) -> Result<PrettyArray<W>, Stop> {
        self.key(key)?;
        self.out.write_all(b"[")?;
        Ok(PrettyArray {
            object: self,
            items: 0,
        })
    }

    /// Close the object (`}`, no newline after it) and hand the writer back.
    pub fn end(mut self) -> Result<W, Stop> {
        if self.fields == 0 {
            self.out.write_all(b"{}")?;
        } else {
            self.out.write_all(b"\n}")?;
        }
        Ok(self.out)
    }

    fn key(&mut self, key: &str) -> Result<(), Stop> {
        self.out
            .write_all(if self.fields == 0 { b"{\n" } else { b",\n" })?;
        self.fields += 1;
        self.out.write_all(INDENT)?;
        serde_json::to_writer(&mut self.out, key)?;
        self.out.write_all(b": ")?;
        Ok(())
    }
}

/// An array field of a [`PrettyObject`] being written element by element.
pub struct PrettyArray<W: Write> {
    object: PrettyObject<W>,
    items: usize,
}

impl<W: Write> PrettyArray<W> {
    /// One element, pretty-printed at depth 2.
    pub fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        let o = &mut self.object;
        o.buf.clear();
        // Serialize first: a value that cannot be serialized leaves no separator behind.
        serde_json::to_writer_pretty(&mut o.buf, value)?;
        o.out
            .write_all(if self.items == 0 { b"\n" } else { b",\n" })?;
        self.items += 1;
        o.out.write_all(INDENT)?;
        o.out.write_all(INDENT)?;
        write_indented(&mut o.out, &o.buf, 2)?;
        Ok(())
    }

    /// Push what was written so far to the reader.
    pub fn flush(&mut self) -> Result<(), Stop> {
        self.object.out.flush()?;
        Ok(())
    }

    /// Close the array (`]`); more fields may follow.
    pub fn end(mut self) -> Result<PrettyObject<W>, Stop> {
        let out = &mut self.object.out;
        if self.items == 0 {
            out.write_all(b"]")?;
        } else {
            out.write_all(b"\n")?;
            out.write_all(INDENT)?;
            out.write_all(b"]")?;
        }
        Ok(self.object)
    }
}

/// Write pretty JSON produced at depth 0 as if at `depth`: every structural newline gets the
/// depth's indentation after it (the first line is already where the caller put it).
fn write_indented<W: Write>(out: &mut W, json: &[u8], depth: usize) -> io::Result<()> {
    let mut lines = json.split(|&b| b == b'\n');
    if let Some(first) = lines.next() {
        out.write_all(first)?;
    }
    for line in lines {
        out.write_all(b"\n")?;
        for _ in 0..depth {
            out.write_all(INDENT)?;
        }
        out.write_all(line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Stream `head` fields, then `items` as the array `key`, then `tail` fields.
    fn streamed(
        head: &[(&str, Value)],
        key: &str,
        items: &[Value],
        tail: &[(&str, Value)],
    ) -> String {
        let mut doc = PrettyObject::new(Vec::new());
        for (k, v) in head {
            doc.field(k, v).unwrap();
        }
        let mut arr = doc.array(key).unwrap();
        for v in items {
            arr.item(v).unwrap();
            arr.flush().unwrap();
        }
        let mut doc = arr.end().unwrap();
        for (k, v) in tail {
            doc.field(k, v).unwrap();
        }
        String::from_utf8(doc.end().unwrap()).unwrap()
    }

    /// serde_json of the whole document, fields in order (a `Map` would sort them).
    fn whole(head: &[(&str, Value)], key: &str, items: &[Value], tail: &[(&str, Value)]) -> String {
        struct Ordered<'a>(Vec<(&'a str, Value)>);
        impl Serialize for Ordered<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in &self.0 {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut fields: Vec<(&str, Value)> = head.to_vec();
        fields.push((key, Value::Array(items.to_vec())));
        fields.extend(tail.iter().cloned());
        serde_json::to_string_pretty(&Ordered(fields)).unwrap()
    }

    fn same(head: &[(&str, Value)], key: &str, items: &[Value], tail: &[(&str, Value)]) {
        assert_eq!(
            streamed(head, key, items, tail),
            whole(head, key, items, tail)
        );
    }

    #[test]
    fn streams_exactly_what_to_string_pretty_prints() {
        let nested = json!({
            "name": "line\nbreak \"quoted\" ünï \u{1}",
            "empty_obj": {},
            "empty_arr": [],
            "n": null,
            "deep": {"a": [1, {"b": [true, false]}, []], "c": {"d": {}}},
            "f": 1.5,
        });
        let head = [
            ("generated_at", json!("2026-11-25T00:10:00Z")),
            ("obj", json!({"x": 1, "y": [1, 2]})),
            ("empty", json!({})),
            ("weird \"key\"\n", json!(null)),
        ];
        same(&head, "jobs", &[], &[]);
        same(&head, "jobs", std::slice::from_ref(&nested), &[]);
        same(
            &head,
            "jobs",
            &[
                nested.clone(),
                json!(3),
                json!([]),
                json!({}),
                nested.clone(),
            ],
            &[],
        );
        same(&[], "only", &[json!("a"), json!(["b"])], &[]);
        same(
            &head,
            "mid",
            std::slice::from_ref(&nested),
            &[("after", nested.clone())],
        );
        same(&[], "mid", &[], &[("after", json!([]))]);
        assert_eq!(
            String::from_utf8(PrettyObject::new(Vec::new()).end().unwrap()).unwrap(),
            serde_json::to_string_pretty(&json!({})).unwrap()
        );
    }
}
