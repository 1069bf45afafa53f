//! Config errors as an operator should see them: file:line:col, the line
//! itself with a caret, what is wrong and what to do.

use super::ConfigSource;
use std::fmt;
use std::ops::Range;

/// One problem in a configuration file.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error has no position (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
    /// The offending source line, for display.
    pub snippet: Option<String>,
}

/// Every problem found; `Display` prints them all.
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigError {
    pub fn without_position(file: String, message: String, hint: &str) -> Self {
        ConfigError {
            file,
            line: 0,
            column: 0,
            message,
            hint: hint.into(),
            snippet: None,
        }
    }

    /// An error at a byte span of the source (an empty span at 0 means "the
    /// file as a whole", reported at line 1).
    pub fn at(src: &ConfigSource, span: Range<usize>, message: String, hint: &str) -> Self {
        let (line, column, snippet) = locate(&src.text, span.start);
        ConfigError {
            file: src.name.clone(),
            line,
            column,
            message,
            hint: hint.into(),
            snippet: Some(snippet),
        }
    }

    /// Converts a TOML/serde error, adding a hint where we can do better
    /// than the parser (a suggestion for a misspelt key).
    pub fn from_toml(src: &ConfigSource, e: &toml::de::Error) -> Self {
        let message = e.message().trim().to_string();
        let hint = hint_for(&message);
        let start = e.span().map(|s| s.start).unwrap_or(0);
        let mut err = ConfigError::at(src, start..start, message, &hint);
        if e.span().is_none() {
            err.snippet = None;
        }
        err
    }
}

fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = text[line_start..offset].chars().count() + 1;
    let snippet = text[line_start..].lines().next().unwrap_or("").to_string();
    (line, column, snippet)
}

fn hint_for(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        if let Some(best) = candidates
            .iter()
            .map(|c| (edit_distance(field, c), *c))
            .filter(|(d, c)| *d <= (c.len() / 3).max(2))
            .min()
        {
            return format!("did you mean `{}`?", best.1);
        }
        return "remove the key, or check the spelling against the config reference in README.md"
            .into();
    }
    if message.starts_with("missing field") {
        return "add the key; see the config reference in README.md".into();
    }
    if message.starts_with("unknown variant") {
        return "use one of the values listed".into();
    }
    "see the config reference in README.md".into()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.line == 0 {
            writeln!(f, "error: {}: {}", self.file, self.message)?;
        } else {
            writeln!(
                f,
                "error: {}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        }
        if let Some(snippet) = &self.snippet {
            let n = self.line.to_string();
            writeln!(f, "{:w$} |", "", w = n.len())?;
            writeln!(f, "{n} | {snippet}")?;
            writeln!(
                f,
                "{:w$} | {:c$}^",
                "",
                "",
                w = n.len(),
                c = self.column.saturating_sub(1)
            )?;
        }
        write!(f, "  = hint: {}", self.hint)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(f, "{e}")?;
        }
        write!(f, "{} error(s) in the configuration", self.0.len())
    }
}

impl std::error::Error for ConfigErrors {}
