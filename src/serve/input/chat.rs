//! Chat prompts: a model's chat template (the Jinja string HF models ship in
//! `tokenizer_config.json` and GGUF files in `tokenizer.chat_template`) rendered over a list of
//! messages by a real template engine (`minijinja`), the way transformers'
//! `apply_chat_template` renders it.
//!
//! The environment matches transformers': `trim_blocks` and `lstrip_blocks` on, the loop
//! controls (`break`, `continue`), Python's string and dict methods (`.strip()`, `.items()`,
//! ... through minijinja-contrib's pycompat), `raise_exception(msg)`, `strftime_now(fmt)` and a
//! `tojson` that writes what Python's `json.dumps(x, ensure_ascii=False)` writes. Variables:
//! `messages` (each with `role` and `content`), `add_generation_prompt`, `bos_token`,
//! `eos_token`.
//!
//! Bounded: a template longer than [`MAX_TEMPLATE_BYTES`] is refused; rendering stops with an
//! error after [`FUEL`] template instructions (an endless or huge loop), [`MAX_RENDER_BYTES`] of
//! output, or 64 levels of recursion. minijinja itself refuses `range` beyond 100,000 items
//! and a repeated string beyond 100 MB; it does not bound a string grown by concatenation in a
//! loop (each step at most doubles it, so within the fuel such a template can still ask for a
//! lot of memory): templates come from model files the user chose to run, like the weights.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde::Serialize;
use std::io::Write;

/// Longest template source accepted, in bytes (real ones are a few KB; the longest tool-calling
/// templates are under 20 KB).
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Longest rendering, in bytes.
pub const MAX_RENDER_BYTES: usize = 16 << 20;
/// Template instructions one rendering may execute (a real template over a long
/// conversation takes a few thousand).
pub const FUEL: u64 = 5_000_000;
/// Deepest nesting of macro calls and includes.
const RECURSION_LIMIT: usize = 64;
/// The name under which the template is stored in its environment.
const NAME: &str = "chat_template";
/// Marks an error raised by the template's own `raise_exception`.
const RAISED: &str = "raise_exception: ";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant" (or whatever roles the template accepts).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with its BOS and EOS token strings.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// The error for a template that does not compile or fails while rendering.
fn template_error(what: &str, e: &minijinja::Error) -> Error {
    let mut msg = format!("{what}: {}", e.kind());
    if let Some(d) = e.detail() {
        msg.push_str(&format!(": {d}"));
    }
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    Error::bad_file("chat template", msg)
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`: ", " and ": " between items
/// without an indent, "," and ": " with one.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PythonFormatter,
        )),
    };
    res.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let s = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(s))
}

/// serde_json's compact output with Python's default separators (", " and ": ").
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Days since 1970-01-01 to a (year, month 1-12, day 1-31) civil date (H. Hinnant's
/// algorithm), for `strftime_now` without a date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `secs` since the Unix epoch (UTC) formatted by `fmt`, with strftime's `%Y %y %m %d %e %B %b
/// %H %M %S %j %%` (the ones chat templates use; any other is an error).
pub fn strftime(secs: i64, fmt: &str) -> std::result::Result<String, String> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let jan1 = {
        // Day of the year: days since this year's January 1st, plus one.
        let mut lo = days - 366;
        while civil_from_days(lo).0 < y {
            lo += 1;
        }
        days - lo + 1
    };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next().ok_or("a format ending in '%'")?;
        let month = MONTHS[(m - 1) as usize];
        match spec {
            'Y' => out.push_str(&y.to_string()),
            'y' => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            'm' => out.push_str(&format!("{m:02}")),
            'd' => out.push_str(&format!("{d:02}")),
            'e' => out.push_str(&format!("{d:>2}")),
            'B' => out.push_str(month),
            'b' => out.push_str(&month[..3]),
            'H' => out.push_str(&format!("{:02}", tod / 3600)),
            'M' => out.push_str(&format!("{:02}", tod / 60 % 60)),
            'S' => out.push_str(&format!("{:02}", tod % 60)),
            'j' => out.push_str(&format!("{jan1:03}")),
            '%' => out.push('%'),
            other => return Err(format!("unsupported strftime directive %{other}")),
        }
    }
    Ok(out)
}

/// Bytes written so far, refusing to go past [`MAX_RENDER_BYTES`] (and remembering it, since
/// minijinja reports a failed write without its reason).
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDER_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("the rendering is too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` and `eos_token` are the strings the template may insert
    /// (`{{ bos_token }}`).
    ///
    /// Errors ([`Error::BadInput`] on "chat template") for a source over
    /// [`MAX_TEMPLATE_BYTES`] or one that does not parse (with the line).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(Error::bad_file(
                "chat template",
                format!(
                    "expected at most {MAX_TEMPLATE_BYTES} bytes of template, found {}",
                    source.len()
                ),
            ));
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISED}{msg}"),
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            strftime(now, &fmt).map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
        });
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| template_error("the template does not parse", &e))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` (as transformers' `apply_chat_template(..., tokenize=False)`).
    ///
    /// Errors: [`Error::Usage`] when the template refuses the messages with
    /// `raise_exception` (e.g. roles that do not alternate), [`Error::BadInput`] on "chat
    /// template" for any other failure: an invalid operation, a rendering over
    /// [`MAX_RENDER_BYTES`], or one out of [`FUEL`].
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| template_error("the template is missing", &e))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let mut out = Bounded::default();
        if let Err(e) = tmpl.render_captured_to(ctx, &mut out) {
            if out.overflowed {
                return Err(Error::bad_file(
                    "chat template",
                    format!("rendering failed: the output exceeds {MAX_RENDER_BYTES} bytes"),
                ));
            }
            if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return Err(Error::Usage(format!(
                    "the chat template refused these messages: {msg}"
                )));
            }
            return Err(template_error("rendering failed", &e));
        }
        String::from_utf8(out.bytes).map_err(|e| {
            Error::bad_file("chat template", format!("the rendering is not UTF-8: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-02-29 13:05:09 UTC (a leap day) and the epoch.
        let t = 1_709_211_909;
        assert_eq!(
            strftime(t, "%Y-%m-%d %H:%M:%S %j %b %B %y %e%%").unwrap(),
            "2024-02-29 13:05:09 060 Feb February 24 29%"
        );
        assert_eq!(strftime(0, "%d %b %Y").unwrap(), "01 Jan 1970");
        assert_eq!(strftime(1_735_689_599, "%j").unwrap(), "366"); // 2024-12-31
        assert!(strftime(0, "%Q").is_err());
        assert!(strftime(0, "%").is_err());
    }
}
