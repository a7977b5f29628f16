//! Reading benchmark files so that every complaint names the file and the line: JSON Lines,
//! JSON arrays (with the line each element starts on), whole JSON documents and TSV tables.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error_at;
use crate::{Error, Result};

pub fn read_text(path: &Path) -> Result<String> {
    Ok(imp::files::read_to_string(
        path,
        imp::files::limits::DATA_BYTES,
    )?)
}

/// The records of a JSON Lines file with their 1-based line numbers; blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    parse_jsonl(path, &read_text(path)?)
}

pub(crate) fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<(usize, Value)>> {
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(line)
            .map_err(|e| error_at(path, index + 1, format!("not a JSON record: {e}")))?;
        records.push((index + 1, value));
    }
    Ok(records)
}

/// A whole JSON document, with serde's line number on failure.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| error_at(path, e.line(), format!("bad JSON: {e}")))
}

/// The elements of a top-level JSON array with the line each one starts on.
pub fn read_json_array(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = read_text(path)?;
    let values: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
        error_at(
            path,
            e.line(),
            format!("expected a JSON array of records: {e}"),
        )
    })?;
    let lines = element_lines(&text);
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (lines.get(i).copied().unwrap_or(1), v))
        .collect())
}

/// Start lines of the top-level array's elements in valid JSON text.
fn element_lines(text: &str) -> Vec<usize> {
    let (mut lines, mut line, mut depth) = (Vec::new(), 1, 0usize);
    let (mut in_string, mut escaped, mut expect_element) = (false, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expect_element && !c.is_whitespace() && c != ']' {
            lines.push(line);
            expect_element = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                expect_element |= depth == 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_element = true,
            _ => {}
        }
    }
    lines
}

/// The column names of a TSV file (its first line), without reading the rest.
pub fn tsv_header(path: &Path) -> Result<Vec<String>> {
    use std::io::BufRead;
    let file = imp::files::open_regular(path)?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| Error::io(path, e))?;
    Ok(line
        .trim_end_matches(['\n', '\r'])
        .split('\t')
        .map(str::to_owned)
        .collect())
}

/// A tab-separated table as pandas' `read_table` reads it: a header row, `"`-quoted fields
/// (which may hold tabs, newlines and doubled quotes), blank lines skipped, short rows padded
/// with empty fields. Rows come with the line they start on.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

pub fn read_tsv(path: &Path) -> Result<Table> {
    let text = read_text(path)?;
    let mut rows = parse_tsv(path, &text)?.into_iter();
    let Some((_, header)) = rows.next() else {
        return Err(error_at(path, 1, "empty table: no header row"));
    };
    let mut table = Table {
        header,
        rows: Vec::new(),
    };
    for (line, mut fields) in rows {
        if fields.len() > table.header.len() {
            return Err(error_at(
                path,
                line,
                format!(
                    "{} fields but the header has {} columns",
                    fields.len(),
                    table.header.len()
                ),
            ));
        }
        fields.resize(table.header.len(), String::new());
        table.rows.push((line, fields));
    }
    Ok(table)
}

fn parse_tsv(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut rows = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        loop {
            match chars.next() {
                None => break,
                Some('"') if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    loop {
                        match chars.next() {
                            None => return Err(error_at(path, start, "unterminated quoted field")),
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                line += usize::from(c == '\n');
                                field.push(c);
                            }
                        }
                    }
                }
                Some('\t') => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                Some('\n') => {
                    line += 1;
                    break;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some(c) => field.push(c),
            }
        }
        if fields.is_empty() && field.is_empty() && !quoted_field {
            continue;
        }
        fields.push(field);
        rows.push((start, fields));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_elements_get_their_start_lines() {
        let text = "[\n  {\"a\": \"x,[{\\\"\"},\n  {\"b\": [1,\n 2]},\n\n  3\n]";
        assert_eq!(element_lines(text), vec![2, 3, 6]);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let path = Path::new("q.jsonl");
        let records = parse_jsonl(path, "{\"a\": 1}\n\n{\"a\": 2}\n").unwrap();
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
        let err = parse_jsonl(path, "{\"a\": 1}\n{\"a\": \n").unwrap_err();
        assert!(
            err.to_string().starts_with("q.jsonl:2: not a JSON record"),
            "{err}"
        );
    }

    #[test]
    fn tsv_quoting_follows_pandas() {
        let path = Path::new("t.tsv");
        let text = "index\tquestion\tA\r\n1\t\"two\tlines\nhere \"\"q\"\"\"\tx\n\n2\tplain \"mid\" quote\n";
        let rows = parse_tsv(path, text).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].0, 2);
        assert_eq!(rows[1].1, vec!["1", "two\tlines\nhere \"q\"", "x"]);
        assert_eq!(rows[2].0, 5);
        assert_eq!(rows[2].1, vec!["2", "plain \"mid\" quote"]);
        assert!(parse_tsv(path, "a\n\"open\n").is_err());
    }
}
