//! Showing an error with its causes.
//!
//! Folio's errors follow the Rust API guidelines on error sources: an error that wraps
//! another says what failed at its own level and returns the inner error from
//! [`std::error::Error::source`]; its message does not repeat the inner one. So `{e}` shows
//! one level, and a report that wants the whole story walks the chain. [`ErrorChain`] does
//! that (`anyhow`'s `{:#}` does the same), and Folio uses it wherever it keeps an error as
//! text: connection status, disconnect reasons, logs.
//!
//! ```
//! use folio_rpc::ErrorChain;
//! use folio_rpc::furl::FurlError;
//!
//! let e = "folio://short@tcp:h:1/x".parse::<folio_rpc::Furl>().unwrap_err();
//! assert!(matches!(e, FurlError::TubId(_)));
//! // One level: what failed.
//! assert_eq!(e.to_string(), "malformed TubId in the FURL");
//! // The chain: and why.
//! assert!(ErrorChain(&e).to_string().starts_with("malformed TubId in the FURL: a TubId is"));
//! ```

use std::error::Error;
use std::fmt;

/// An error and its [`source`](Error::source)s, shown as `outer: inner: innermost`.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

/// The most sources [`ErrorChain`] shows (a cycle or a very deep chain stops there).
const MAX_DEPTH: usize = 16;

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        let mut depth = 0;
        while let Some(e) = next {
            if depth == MAX_DEPTH {
                return f.write_str(": …");
            }
            write!(f, ": {e}")?;
            next = e.source();
            depth += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn shows_every_level_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(e.to_string(), "outer");
        assert_eq!(ErrorChain(&e).to_string(), "outer: inner");
        let io = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&io).to_string(), "alone");
    }
}
