//! Bounding what a plugin returns: texts cut at [`MAX_MESSAGE_BYTES`] with a marker, tags
//! capped in count and size, and the outcome checked against the output cap and the contract
//! (only well-formed headers). It must never let anything a plugin produced reach the store
//! or the admin API unbounded.

use crate::failure::Failure;
use crate::{Action, Header, Outcome};

/// The longest drop reason, error message or trap text kept from a run; the rest is cut with
/// a marker that says how much. These texts are stored with the event and listed by the admin
/// API and dashboard, so they must stay small whatever a plugin returns.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Tags kept per run, and the longest tag; the excess is dropped and counted in the run's log.
pub const MAX_TAGS: usize = 32;
/// See [`MAX_TAGS`].
pub const MAX_TAG_BYTES: usize = 128;
/// What each log line costs against `log_bytes` beyond its text, so that a flood of empty
/// lines is bounded as surely as a flood of long ones (and roughly what a stored line costs).
pub(crate) const LOG_LINE_OVERHEAD: usize = 32;

/// `text` cut to at most `max` bytes (on a character boundary), with a marker saying how many
/// bytes were cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    text.truncate(end);
    text.push_str(&format!("… [{cut} more bytes cut]"));
    text
}

/// The drop reason and tags of an outcome bounded (see [`MAX_MESSAGE_BYTES`], [`MAX_TAGS`]),
/// and how many tags were dropped.
pub(crate) fn bound_texts(mut outcome: Outcome) -> (Outcome, usize) {
    if let Action::Drop(reason) = &mut outcome.action {
        *reason = truncate(std::mem::take(reason), MAX_MESSAGE_BYTES);
    }
    let dropped = outcome.tags.len().saturating_sub(MAX_TAGS);
    outcome.tags.truncate(MAX_TAGS);
    for tag in &mut outcome.tags {
        *tag = truncate(std::mem::take(tag), MAX_TAG_BYTES);
    }
    (outcome, dropped)
}

/// The outcome within the output cap, naming only what the contract allows.
pub(crate) fn check_output(outcome: Outcome, cap: usize) -> Result<Outcome, Failure> {
    let headers = |hs: &[Header]| hs.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>();
    let reason = match &outcome.action {
        Action::Drop(reason) => reason.len(),
        Action::Continue => 0,
    };
    let size = reason
        + outcome.body.as_ref().map_or(0, Vec::len)
        + headers(&outcome.headers)
        + outcome.tags.iter().map(String::len).sum::<usize>()
        + outcome
            .forwards
            .iter()
            .map(|f| f.upstream.len() + f.body.as_ref().map_or(0, Vec::len) + headers(&f.headers))
            .sum::<usize>();
    if size > cap {
        return Err(Failure::BadOutput(format!("the outcome is {size} bytes, over the {cap}-byte cap")));
    }
    for header in outcome.headers.iter().chain(outcome.forwards.iter().flat_map(|f| f.headers.iter())) {
        if http::header::HeaderName::from_bytes(header.name.as_bytes()).is_err()
            || http::header::HeaderValue::from_str(&header.value).is_err()
        {
            return Err(Failure::BadOutput(format!("header {:?} is not a valid HTTP header", header.name)));
        }
    }
    Ok(outcome)
}
