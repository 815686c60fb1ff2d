//! Splits a YAML stream into its documents at `---` / `...` lines, before any parsing, so that a
//! syntax error in one document cannot hide the documents after it (libyaml cannot resume a
//! stream after an error).

/// One document of a multi-document YAML file, as raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawDocument<'a> {
    /// 1-based position among the file's non-blank documents.
    pub index: usize,
    /// 1-based line of the file where `text` starts.
    pub first_line: usize,
    /// The document, including its leading `---` line if it has one: libyaml reads that marker
    /// itself, and keeping it puts the document's content below line 1 so that every error
    /// mark has a line number.
    pub text: &'a str,
}

/// Splits `text` into documents; documents holding only blank lines, comments and markers are
/// left out (they are empty to YAML too) and not counted in `index`.
///
/// A line is a document start when it begins with `---` followed by nothing or whitespace, and
/// a document end when it is `...`. Both are only markers at column 0, where no YAML content
/// of a Kubernetes object (always a mapping) can sit inside a block scalar.
pub(crate) fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let line_end = offset + line.len();
        if is_marker(line, "---") {
            push_document(&mut docs, &text[start..offset], start_line);
            start = offset;
            start_line = line_no;
        } else if is_marker(line, "...") {
            push_document(&mut docs, &text[start..line_end], start_line);
            start = line_end;
            start_line = line_no + 1;
        }
        offset = line_end;
    }
    push_document(&mut docs, &text[start..], start_line);
    docs
}

fn push_document<'a>(docs: &mut Vec<RawDocument<'a>>, chunk: &'a str, first_line: usize) {
    if has_content(chunk) {
        docs.push(RawDocument {
            index: docs.len() + 1,
            first_line,
            text: chunk,
        });
    }
}

/// `line` is `marker` alone or followed by whitespace (`--- # comment`, `--- \n`).
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
}

/// Whether a chunk holds anything but blank lines, comments and document markers (a marker
/// line may carry content itself: `--- {a: 1}`).
fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|line| {
        let body = if is_marker(line, "---") || is_marker(line, "...") {
            line[3..].trim()
        } else {
            line.trim()
        };
        !body.is_empty() && !body.starts_with('#')
    })
}

/// Rewrites every `line N` in a parser message by `offset`, turning positions inside a document
/// into positions inside its file.
pub(crate) fn shift_line_numbers(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(pos) = rest.find("line ") {
        let (before, after) = rest.split_at(pos + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<(usize, usize, &str)> {
        split_documents(s)
            .into_iter()
            .map(|d| (d.index, d.first_line, d.text))
            .collect()
    }

    #[test]
    fn single_document_without_marker() {
        assert_eq!(texts("a: 1\nb: 2\n"), vec![(1, 1, "a: 1\nb: 2\n")]);
    }

    #[test]
    fn markers_split_and_empty_documents_vanish() {
        let s = "---\na: 1\n---\n# only a comment\n---\n\n--- \nb: 2\n...\n";
        assert_eq!(
            texts(s),
            vec![(1, 1, "---\na: 1\n"), (2, 7, "--- \nb: 2\n...\n")]
        );
    }

    #[test]
    fn indented_dashes_are_content() {
        let s = "a: |\n  ---\n  text\n";
        assert_eq!(texts(s).len(), 1);
    }

    #[test]
    fn dashes_followed_by_text_are_not_a_marker() {
        assert_eq!(texts("---x: 1\n").len(), 1);
        assert_eq!(texts("--- {a: 1}\n"), vec![(1, 1, "--- {a: 1}\n")]);
    }

    #[test]
    fn crlf_lines() {
        assert_eq!(texts("a: 1\r\n---\r\nb: 2\r\n").len(), 2);
    }

    #[test]
    fn shifts_line_numbers() {
        assert_eq!(
            shift_line_numbers("x at line 3 column 4, y at line 1 column 1", 10),
            "x at line 13 column 4, y at line 11 column 1"
        );
        assert_eq!(shift_line_numbers("no position", 5), "no position");
    }
}
