//! Inventory problems as miette diagnostics, and a deterministic plain-text renderer.

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};
use std::fmt;

use super::tree::Pos;

/// One thing wrong with an inventory: what is wrong, where (zero or more labelled spans in the
/// file) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    /// (byte offset, byte length, label) in the inventory text.
    pub labels: Vec<(usize, usize, String)>,
    pub help: Option<String>,
}

impl Problem {
    pub(crate) fn new(message: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            labels: Vec::new(),
            help: None,
        }
    }

    pub(crate) fn label(mut self, pos: Option<Pos>, text: impl Into<String>) -> Problem {
        if let Some(p) = pos {
            self.labels.push((p.offset, p.len, text.into()));
        }
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Offset of the first label (problems are reported in file order).
    pub(crate) fn first_offset(&self) -> usize {
        self.labels.first().map(|l| l.0).unwrap_or(0)
    }

    fn labeled_spans(&self) -> Vec<LabeledSpan> {
        self.labels
            .iter()
            .map(|(o, l, t)| LabeledSpan::new(Some(t.clone()), *o, *l))
            .collect()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            None
        } else {
            Some(Box::new(self.labeled_spans().into_iter()))
        }
    }
}

/// Everything wrong with one inventory file, reported at once. With a single problem the report
/// is that problem; with several, a summary line and each problem under it.
#[derive(Debug)]
pub struct InventoryError {
    file: String,
    src: NamedSource<String>,
    problems: Vec<Problem>,
}

impl InventoryError {
    pub(crate) fn new(file: &str, text: &str, mut problems: Vec<Problem>) -> InventoryError {
        problems.sort_by_key(|p| p.first_offset());
        InventoryError {
            file: file.to_string(),
            src: NamedSource::new(file, text.to_string()),
            problems,
        }
    }

    /// The file name as given to the loader.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The problems, in file order.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    fn single(&self) -> Option<&Problem> {
        match self.problems.as_slice() {
            [p] => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.single() {
            Some(p) if !p.labels.is_empty() => write!(f, "{}", p.message),
            Some(p) => write!(f, "{}: {}", self.file, p.message),
            None => write!(
                f,
                "{}: {} problems in the inventory",
                self.file,
                self.problems.len()
            ),
        }
    }
}

impl std::error::Error for InventoryError {}

impl Diagnostic for InventoryError {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single()?
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let p = self.single()?;
        if p.labels.is_empty() {
            return None;
        }
        Some(Box::new(p.labeled_spans().into_iter()))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.problems.len() < 2 {
            return None;
        }
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// Render a diagnostic as plain text: no colours, no hyperlinks, fixed width (100 columns),
/// whatever the terminal. The same input always gives the same text (used by snapshot tests
/// and logs). Related diagnostics (an [`InventoryError`] with several problems) follow the
/// summary line, each as its own block with the parent's source.
pub fn render_plain(diag: &dyn Diagnostic) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false)
        .with_urls(false);
    let render = |d: &dyn Diagnostic| {
        let mut out = String::new();
        if handler.render_report(&mut out, d).is_err() {
            // Only a failing Display impl makes this fail; fall back to the message.
            out = format!("  × {d}\n");
        }
        out
    };
    let src = diag.source_code();
    let mut out = render(&Alone { inner: diag, src });
    if let Some(related) = diag.related() {
        for rel in related {
            out.push('\n');
            out.push_str(&render(&Alone { inner: rel, src }));
        }
    }
    out
}

/// A diagnostic without its related ones, and with a fallback source (the parent's).
struct Alone<'a> {
    inner: &'a dyn Diagnostic,
    src: Option<&'a dyn miette::SourceCode>,
}

impl fmt::Debug for Alone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for Alone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for Alone<'_> {}

impl Diagnostic for Alone<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.inner.severity()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.inner.source_code().or(self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.inner.labels()
    }
    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.inner.diagnostic_source()
    }
}
