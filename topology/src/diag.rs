//! Diagnostics: what is wrong with a topology file, where, and what to do about it.
//!
//! Every problem the parser or the validator finds becomes one [`Diagnostic`] with a
//! stable [`Code`], a message, an optional hint and (nearly always) a byte span into
//! the source. [`SourceMap`] turns spans into 1-based line and column numbers;
//! [`render_human`] prints rustc-style reports. This module never does I/O.

use std::fmt;
use std::ops::Range;

use serde::Serialize;

/// How bad a problem is. Errors make a topology invalid; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// Stable, machine-readable identifier of a kind of problem. Scripts may match on the
/// kebab-case name printed in JSON output; the names never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The file could not be read, is not UTF-8 or is too large.
    Input,
    /// TOML syntax error.
    Syntax,
    /// A key the schema does not know (often a typo).
    UnknownKey,
    /// A required key is missing.
    MissingKey,
    /// A value has the wrong type or an unparseable form.
    BadValue,
    /// An id is malformed.
    BadId,
    /// Two entities of the same kind share an id.
    DuplicateId,
    /// A reference names an entity that does not exist.
    DanglingRef,
    /// Not exactly two production sites and one witness site.
    SiteCount,
    /// A number that must be positive is zero or negative, or out of range.
    OutOfRange,
    /// `depends_on` forms a cycle.
    DependencyCycle,
    /// An app depends on an app of a later tier.
    TierOrder,
    /// A VM is larger than every host.
    OversizeVm,
    /// An async volume has no lag bound, or the bound contradicts the RPO target.
    Replication,
    /// An RTO target is below what the timing budget can achieve.
    RtoBudget,
    /// A surviving production site cannot run every application.
    Capacity,
    /// The timing settings contradict each other.
    Timing,
    /// The orchestrator voters cannot survive the loss of one site.
    Quorum,
    /// Something that is allowed but probably a mistake.
    Suspicious,
}

impl Code {
    /// The kebab-case name, as printed in reports and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Input => "input",
            Code::Syntax => "syntax",
            Code::UnknownKey => "unknown-key",
            Code::MissingKey => "missing-key",
            Code::BadValue => "bad-value",
            Code::BadId => "bad-id",
            Code::DuplicateId => "duplicate-id",
            Code::DanglingRef => "dangling-ref",
            Code::SiteCount => "site-count",
            Code::OutOfRange => "out-of-range",
            Code::DependencyCycle => "dependency-cycle",
            Code::TierOrder => "tier-order",
            Code::OversizeVm => "oversize-vm",
            Code::Replication => "replication",
            Code::RtoBudget => "rto-budget",
            Code::Capacity => "capacity",
            Code::Timing => "timing",
            Code::Quorum => "quorum",
            Code::Suspicious => "suspicious",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a topology file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: Code,
    /// What is wrong, in one sentence.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// Byte range in the source this is about (None only for file-level problems).
    pub span: Option<Range<usize>>,
    /// A second place that explains this one (e.g. where a duplicate id was first used).
    pub related: Option<(Range<usize>, String)>,
}

impl Diagnostic {
    pub fn error(code: Code, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
            span,
            related: None,
        }
    }

    pub fn warning(code: Code, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[must_use]
    pub fn with_related(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.related = Some((span, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LineCol {
    pub line: usize,
    pub column: usize,
}

/// Maps byte offsets of one source text to lines and columns.
#[derive(Debug, Clone)]
pub struct SourceMap<'s> {
    src: &'s str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl<'s> SourceMap<'s> {
    pub fn new(src: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap { src, line_starts }
    }

    pub fn source(&self) -> &'s str {
        self.src
    }

    /// Line and column of a byte offset (clamped to the text, and to a char boundary).
    pub fn line_col(&self, offset: usize) -> LineCol {
        let offset = self.floor_boundary(offset.min(self.src.len()));
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line_idx];
        let column = self.src[start..offset].chars().count() + 1;
        LineCol {
            line: line_idx + 1,
            column,
        }
    }

    /// The full lines that a span touches, with the byte offset of their start.
    fn lines_around(&self, span: &Range<usize>) -> (usize, &'s str) {
        let first = self.line_col(span.start).line - 1;
        let last = self.line_col(span.end.max(span.start)).line - 1;
        let start = self.line_starts[first];
        let end = self
            .line_starts
            .get(last + 1)
            .map_or(self.src.len(), |&e| e.saturating_sub(1));
        let end = self.floor_boundary(end.max(start));
        (start, &self.src[start..end])
    }

    fn floor_boundary(&self, mut i: usize) -> usize {
        while i > 0 && !self.src.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A diagnostic as it appears in JSON output (`--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct JsonDiagnostic {
    pub severity: Severity,
    pub code: Code,
    pub message: String,
    pub hint: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub end_line: Option<usize>,
    pub end_column: Option<usize>,
    pub related: Option<JsonRelated>,
}

/// The second place of a diagnostic, in JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct JsonRelated {
    pub line: usize,
    pub column: usize,
    pub label: String,
}

impl Diagnostic {
    /// Resolve spans to line/column for machine-readable output.
    pub fn to_json(&self, map: &SourceMap<'_>) -> JsonDiagnostic {
        let start = self.span.as_ref().map(|s| map.line_col(s.start));
        let end = self.span.as_ref().map(|s| map.line_col(s.end));
        JsonDiagnostic {
            severity: self.severity,
            code: self.code,
            message: self.message.clone(),
            hint: self.hint.clone(),
            line: start.map(|p| p.line),
            column: start.map(|p| p.column),
            end_line: end.map(|p| p.line),
            end_column: end.map(|p| p.column),
            related: self.related.as_ref().map(|(span, label)| {
                let p = map.line_col(span.start);
                JsonRelated {
                    line: p.line,
                    column: p.column,
                    label: label.clone(),
                }
            }),
        }
    }
}

/// Render diagnostics the way rustc does: a header line, `--> file:line:col`, the
/// source line with the span underlined, and the hint. `color` adds ANSI styles.
pub fn render_human(diags: &[Diagnostic], map: &SourceMap<'_>, path: &str, color: bool) -> String {
    use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};

    let renderer = if color {
        Renderer::styled()
    } else {
        Renderer::plain()
    };
    let mut out = String::new();
    for d in diags {
        let level = match d.severity {
            Severity::Error => Level::ERROR,
            Severity::Warning => Level::WARNING,
        };
        let title = level.primary_title(d.message.as_str()).id(d.code.as_str());
        let mut groups: Vec<Group<'_>> = Vec::new();
        let group = match &d.span {
            Some(span) => {
                // Only the lines around the span are handed to the renderer so that a
                // report on a huge file stays linear in the number of diagnostics.
                let (base, text) = map.lines_around(span);
                let line = map.line_col(base).line;
                let rel = clamp_span(span, base, text.len());
                let mut snippet = Snippet::source(text)
                    .line_start(line)
                    .path(path)
                    .annotation(AnnotationKind::Primary.span(rel));
                if let Some((rspan, label)) = &d.related {
                    // The related place is shown only when it is on the same lines;
                    // otherwise it is printed as a note with its own position.
                    if rspan.start >= base && rspan.end <= base + text.len() {
                        snippet = snippet.annotation(
                            AnnotationKind::Context
                                .span(clamp_span(rspan, base, text.len()))
                                .label(label.as_str()),
                        );
                    }
                }
                title.element(snippet)
            }
            None => title.element(Level::NOTE.message(format!("in {path}"))),
        };
        groups.push(group);
        if let Some((rspan, label)) = &d.related {
            let p = map.line_col(rspan.start);
            groups.push(Group::with_title(Level::NOTE.secondary_title(format!(
                "{label} ({path}:{}:{})",
                p.line, p.column
            ))));
        }
        if let Some(hint) = &d.hint {
            groups.push(Group::with_title(
                Level::HELP.secondary_title(hint.as_str()),
            ));
        }
        out.push_str(&renderer.render(&groups));
        out.push_str("\n\n");
    }
    out
}

fn clamp_span(span: &Range<usize>, base: usize, len: usize) -> Range<usize> {
    let start = span.start.saturating_sub(base).min(len);
    let end = span.end.saturating_sub(base).clamp(start, len);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters_from_one() {
        let src = "a = 1\nbé = 2\n\nc";
        let map = SourceMap::new(src);
        assert_eq!(map.line_col(0), LineCol { line: 1, column: 1 });
        assert_eq!(map.line_col(6), LineCol { line: 2, column: 1 });
        // 'é' is two bytes; the '=' after it is the 4th character of line 2.
        assert_eq!(map.line_col(10), LineCol { line: 2, column: 4 });
        assert_eq!(map.line_col(src.len()), LineCol { line: 4, column: 2 });
        // Offsets past the end or inside a character are clamped, never panic.
        assert_eq!(map.line_col(9999).line, 4);
        assert_eq!(map.line_col(8).line, 2);
    }

    #[test]
    fn human_rendering_names_file_line_and_hint() {
        let src = "[[site]]\nid = \"a\"\nrole = \"prod\"\n";
        let map = SourceMap::new(src);
        let start = src.find("\"prod\"").unwrap_or(0);
        let d = Diagnostic::error(Code::BadValue, Some(start..start + 6), "bad role")
            .with_hint("use \"production\" or \"witness\"");
        let text = render_human(&[d], &map, "t.toml", false);
        assert!(text.contains("error[bad-value]: bad role"), "{text}");
        assert!(text.contains("t.toml:3:8"), "{text}");
        assert!(text.contains("role = \"prod\""), "{text}");
        assert!(text.contains("use \"production\""), "{text}");
    }
}
