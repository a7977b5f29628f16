//! MMBench: answers are read as option letters the way LLaVA's `llava/eval/eval_mmbench.py`
//! (`auto_parse_answer`) does before it would fall back to a ChatGPT judge (not used here:
//! unreadable answers count as wrong and are reported). Scoring is circular: the benchmark's
//! TSV holds each question several times with the options rotated, under the indices
//! `i + k * 10^6`, and a question counts as right only when every copy is (OpenCompass's
//! CircularEval). The submission for the OpenCompass server is the `.xlsx` that LLaVA's
//! `convert_mmbench_for_submission.py` writes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use imp::files::Overwrite;
use serde::Serialize;
use serde_json::Value;

use super::answers::{match_answers, AnswerLine};
use super::error_at;
use super::prompts::MMBENCH_LETTERS;
use super::question::{Question, QuestionId};
use crate::{Error, Result};

/// Circular copies of a question share `index % CIRCULAR_STRIDE`.
const CIRCULAR_STRIDE: i64 = 1_000_000;

/// `auto_parse_answer`: the answer as a bare letter (dots and spaces trimmed), else the first
/// letter X with "the answer is X." in it, else the one option whose text contains the answer.
pub fn parse_option(answer: &str, options: &[String]) -> Option<usize> {
    let letters = &MMBENCH_LETTERS[..options.len().min(MMBENCH_LETTERS.len())];
    let bare = answer.trim_matches('.').trim().to_uppercase();
    if let Some(i) = letters.iter().position(|l| *l == bare) {
        return Some(i);
    }
    let lower = answer.to_lowercase();
    if let Some(i) = letters
        .iter()
        .position(|l| lower.contains(&format!("the answer is {}.", l.to_lowercase())))
    {
        return Some(i);
    }
    let mut containing = options
        .iter()
        .enumerate()
        .filter(|(_, o)| o.to_lowercase().contains(&lower));
    match (containing.next(), containing.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Accuracies in percent.
#[derive(Clone, Debug, Serialize)]
pub struct MmBenchScore {
    /// Questions after merging circular copies.
    pub questions: usize,
    pub circular_accuracy: f64,
    /// Rows right, every copy counted on its own.
    pub rows: usize,
    pub vanilla_accuracy: f64,
    /// Answers that could not be read as a letter (a judge model would be asked).
    pub unparsed: usize,
    pub circular_by_category: BTreeMap<String, f64>,
}

/// Scores answers to the rows of a TSV that has the `answer` column (the dev split).
pub fn score(
    questions: &[Question],
    questions_path: &Path,
    answers: &[AnswerLine],
    answers_path: &Path,
) -> Result<MmBenchScore> {
    let pairs = match_answers(questions, questions_path, answers, answers_path)?;
    // group -> (category, all copies right)
    let mut groups: BTreeMap<i64, (String, bool)> = BTreeMap::new();
    let (mut rows_right, mut unparsed) = (0, 0);
    for (question, answer) in &pairs {
        let field = |name: &str| question.record.get(name).and_then(Value::as_str);
        let truth = field("answer").ok_or_else(|| {
            error_at(
                questions_path,
                question.line,
                "no `answer` column: this split is scored by the OpenCompass server; write the \
                 submission file instead",
            )
        })?;
        let (options, option_char) = displayed_options(question, answer);
        let chosen = parse_option(&answer.text, &options);
        unparsed += usize::from(chosen.is_none());
        let right = chosen.is_some_and(|i| option_char.get(i).is_some_and(|c| c == truth));
        rows_right += usize::from(right);
        let QuestionId::Int(index) = question.id else {
            return Err(error_at(
                questions_path,
                question.line,
                "MMBench indices are integers",
            ));
        };
        let category = field("category").unwrap_or_default().to_owned();
        let group = groups
            .entry(index % CIRCULAR_STRIDE)
            .or_insert((category, true));
        group.1 &= right;
    }
    let mut by_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (category, right) in groups.values() {
        let entry = by_category.entry(category.clone()).or_default();
        entry.0 += usize::from(*right);
        entry.1 += 1;
    }
    let percent = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let circular_right = groups.values().filter(|g| g.1).count();
    Ok(MmBenchScore {
        questions: groups.len(),
        circular_accuracy: percent(circular_right, groups.len()),
        rows: pairs.len(),
        vanilla_accuracy: percent(rows_right, pairs.len()),
        unparsed,
        circular_by_category: by_category
            .into_iter()
            .map(|(c, (a, b))| (c, percent(a, b)))
            .collect(),
    })
}

/// The options as the model saw them and the original letter of each: from the answer line
/// when it records them (LLaVA's `--all-rounds` rotates them), else from the question.
fn displayed_options(question: &Question, answer: &AnswerLine) -> (Vec<String>, Vec<String>) {
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v?.as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let from_answer =
        strings(answer.extra.get("options")).zip(strings(answer.extra.get("option_char")));
    from_answer.unwrap_or_else(|| {
        let options = strings(question.answer_fields.get("options")).unwrap_or_default();
        let letters = MMBENCH_LETTERS[..options.len()]
            .iter()
            .map(|l| l.to_string())
            .collect();
        (options, letters)
    })
}

/// Columns `convert_mmbench_for_submission.py` drops before inserting `prediction` at position 6.
const DROPPED_COLUMNS: [&str; 6] = [
    "hint",
    "category",
    "source",
    "image",
    "comment",
    "l2-category",
];

/// Writes the OpenCompass upload: the TSV's rows without the dropped columns, with each
/// question's answer text in a `prediction` column (empty where unanswered).
pub fn write_submission(
    questions: &[Question],
    questions_path: &Path,
    header: &[String],
    answers: &[AnswerLine],
    answers_path: &Path,
    out: &Path,
    overwrite: Overwrite,
) -> Result<()> {
    let rows_by_id: HashMap<&QuestionId, usize> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| (&q.id, i))
        .collect();
    let mut predictions: Vec<Option<&str>> = vec![None; questions.len()];
    for answer in answers {
        let row = rows_by_id.get(&answer.question_id).ok_or_else(|| {
            error_at(
                answers_path,
                answer.line,
                format!(
                    "question_id {} is not in {}",
                    answer.question_id,
                    questions_path.display()
                ),
            )
        })?;
        predictions[*row] = Some(&answer.text);
    }
    let mut columns: Vec<&str> = header
        .iter()
        .map(String::as_str)
        .filter(|c| !DROPPED_COLUMNS.contains(c))
        .collect();
    columns.insert(6.min(columns.len()), "prediction");
    let rows = questions.iter().zip(predictions).map(|(q, prediction)| {
        columns
            .iter()
            .map(|&c| match c {
                "prediction" => prediction.map(Cell::Text),
                "index" => match q.id {
                    QuestionId::Int(n) => Some(Cell::Number(n)),
                    QuestionId::Str(_) => None,
                },
                _ => q
                    .record
                    .get(c)
                    .and_then(Value::as_str)
                    .filter(|v| !super::prompts::is_pandas_none(v))
                    .map(Cell::Text),
            })
            .collect::<Vec<_>>()
    });
    let header_row = columns.iter().map(|c| Some(Cell::Text(c))).collect();
    let sheet = sheet_xml(std::iter::once(header_row).chain(rows));
    let bytes = xlsx(&sheet).map_err(|e| Error::io(out, e))?;
    Ok(imp::files::write(out, &bytes, overwrite)?)
}

enum Cell<'a> {
    Text(&'a str),
    Number(i64),
}

/// A worksheet with inline strings (no shared-string table needed).
fn sheet_xml<'a>(rows: impl Iterator<Item = Vec<Option<Cell<'a>>>>) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<worksheet \
         xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\"><sheetData>",
    );
    for (r, row) in rows.enumerate() {
        xml.push_str(&format!("<row r=\"{}\">", r + 1));
        for (c, cell) in row.into_iter().enumerate() {
            let reference = format!("{}{}", column_name(c), r + 1);
            match cell {
                None => {}
                Some(Cell::Number(n)) => xml.push_str(&format!("<c r=\"{reference}\"><v>{n}</v></c>")),
                Some(Cell::Text(t)) => xml.push_str(&format!(
                    "<c r=\"{reference}\" t=\"inlineStr\"><is><t xml:space=\"preserve\">{}</t></is></c>",
                    xml_escape(t)
                )),
            }
        }
        xml.push_str("</row>");
    }
    xml.push_str("</sheetData></worksheet>");
    xml
}

/// Spreadsheet column letters: A..Z, AA, AB, ...
fn column_name(mut index: usize) -> String {
    let mut name = Vec::new();
    loop {
        name.push(b'A' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    name.reverse();
    String::from_utf8(name).expect("ASCII")
}

/// Escapes markup and drops characters XML 1.0 cannot hold.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The workbook's bytes: small enough to build in memory and write in one piece.
fn xlsx(sheet: &str) -> std::io::Result<Vec<u8>> {
    const CONTENT_TYPES: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n\
<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
<Default Extension=\"rels\" ContentType=\"application/vnd.openxmlformats-package.relationships+xml\"/>\
<Default Extension=\"xml\" ContentType=\"application/xml\"/>\
<Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
<Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/>\
</Types>";
    const ROOT_RELS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n\
<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
<Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument\" Target=\"xl/workbook.xml\"/>\
</Relationships>";
    const WORKBOOK: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n\
<workbook xmlns=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\" \
xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\">\
<sheets><sheet name=\"Sheet1\" sheetId=\"1\" r:id=\"rId1\"/></sheets></workbook>";
    const WORKBOOK_RELS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n\
<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\">\
<Relationship Id=\"rId1\" Type=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet\" Target=\"worksheets/sheet1.xml\"/>\
</Relationships>";
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    // The workspace's zip build has no deflate; stored entries are valid xlsx parts.
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, content) in [
        ("[Content_Types].xml", CONTENT_TYPES),
        ("_rels/.rels", ROOT_RELS),
        ("xl/workbook.xml", WORKBOOK),
        ("xl/_rels/workbook.xml.rels", WORKBOOK_RELS),
        ("xl/worksheets/sheet1.xml", sheet),
    ] {
        zip.start_file(name, options)?;
        zip.write_all(content.as_bytes())?;
    }
    Ok(zip.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_as_eval_mmbench() {
        // Results of LLaVA's auto_parse_answer (None where it would ask ChatGPT).
        let options: Vec<String> = ["red apple", "green pear", "blue sky", "yellow banana"]
            .map(String::from)
            .to_vec();
        let cases = [
            ("A", Some(0)),
            ("b", Some(1)),
            ("C.", Some(2)),
            (".D.", Some(3)),
            (" B ", Some(1)),
            ("E", None),
            ("The answer is C.", Some(2)),
            ("the answer is b. or the answer is a.", Some(0)),
            ("pear", Some(1)),
            ("Apple", Some(0)),
            ("a", Some(0)),
            ("blue", Some(2)),
            ("an apple", None),
            ("", None),
        ];
        for (answer, expected) in cases {
            assert_eq!(parse_option(answer, &options), expected, "{answer:?}");
        }
        assert_eq!(parse_option("", &["x".to_string()]), Some(0));
    }

    #[test]
    fn spreadsheet_columns_and_escaping() {
        assert_eq!(column_name(0), "A");
        assert_eq!(column_name(25), "Z");
        assert_eq!(column_name(26), "AA");
        assert_eq!(column_name(27), "AB");
        assert_eq!(column_name(702), "AAA");
        assert_eq!(
            xml_escape("a<b & \"c\"\u{1}\n"),
            "a&lt;b &amp; &quot;c&quot;\n"
        );
    }
}
