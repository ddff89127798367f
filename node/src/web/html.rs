//! Small helpers for the gateway's server-rendered HTML.

use std::fmt::Write;

use crate::dirnode::now;

/// `s` with HTML's special characters escaped (for text and attribute values alike).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A span of seconds, roughly: `42 s`, `3 min`, `5 h`, `2 d`.
pub fn span(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7_199 => format!("{} min", secs / 60),
        7_200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// `at` (seconds since the epoch) relative to now: `12 s ago`, `in 3 min`.
pub fn relative(at: u64) -> String {
    let now = now();
    if at <= now {
        format!("{} ago", span(now - at))
    } else {
        format!("in {}", span(at - now))
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 GiB` (the command line's).
pub use crate::transfer::human as bytes;

/// A table: a header row, then rows of already-escaped cells with a class and data
/// attributes on each row.
pub struct Table {
    out: String,
}

impl Table {
    /// A table with `id` and the column titles.
    pub fn new(id: &str, columns: &[&str]) -> Table {
        let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
        for c in columns {
            let _ = write!(out, "<th>{}</th>", esc(c));
        }
        out.push_str("</tr></thead><tbody>");
        Table { out }
    }

    /// A row; `attrs` is written into the `<tr>` as is (built with [`esc`]).
    pub fn row(&mut self, attrs: &str, cells: &[String]) {
        let _ = write!(self.out, "<tr {attrs}>");
        for c in cells {
            let _ = write!(self.out, "<td>{c}</td>");
        }
        self.out.push_str("</tr>");
    }

    /// The finished HTML.
    pub fn finish(mut self) -> String {
        self.out.push_str("</tbody></table>");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_units() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(span(59), "59 s");
        assert_eq!(span(600), "10 min");
        assert_eq!(span(7200), "2 h");
        assert_eq!(span(3 * 86_400), "3 d");
    }
}
