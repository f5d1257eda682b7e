//! The in-context row's prompts: a task's first training pairs as earlier turns of the same
//! chat, before the test question.
//!
//! The data files hold prompts already rendered by the chat template (one user turn with the
//! assistant's turn opened), so the user's text is recovered by rendering a marker through the
//! same template and matching what surrounds it; a prompt the template did not make is an
//! error, not a guess.

use crate::error::{Error, Result};
use crate::serve::generate::text::TextGenerator;
use crate::serve::input::chat::ChatMessage;
use std::path::Path;

/// A marker no prompt holds: the user's text in the rendering that shows the template's frame.
const MARKER: &str = "\u{1}elx-user-turn\u{1}";

/// How one user turn is framed by the model's chat template: the text before and after it.
pub(super) struct UserTurnFrame {
    before: String,
    after: String,
}

impl UserTurnFrame {
    /// The frame of `generator`'s chat template (an error when the model has none).
    pub(super) fn of(generator: &TextGenerator) -> Result<UserTurnFrame> {
        let rendered = generator.chat_prompt(&[ChatMessage::new("user", MARKER)])?;
        let (before, after) = rendered.split_once(MARKER).ok_or_else(|| {
            Error::Usage("the chat template does not show the user's text as written".into())
        })?;
        Ok(UserTurnFrame {
            before: before.to_string(),
            after: after.to_string(),
        })
    }

    /// The user's text of `prompt`, a rendered single user turn; `source` and `line` name it
    /// in the error when the template did not make it.
    pub(super) fn user_text<'a>(
        &self,
        prompt: &'a str,
        source: &Path,
        line: usize,
    ) -> Result<&'a str> {
        prompt
            .strip_prefix(self.before.as_str())
            .and_then(|p| p.strip_suffix(self.after.as_str()))
            .ok_or_else(|| {
                Error::bad_file(
                    source,
                    format!(
                        "line {line}: expected a prompt rendered by the model's chat template (one user turn, the assistant's turn opened), for the in-context row"
                    ),
                )
            })
    }
}

/// The in-context prompt of `question`: `examples` (user text, answer) as earlier turns of
/// the same chat, then `question`'s user turn with the assistant's turn opened.
pub(super) fn in_context_prompt(
    generator: &TextGenerator,
    examples: &[(String, String)],
    question: &str,
) -> Result<String> {
    let mut messages = Vec::with_capacity(2 * examples.len() + 1);
    for (user, answer) in examples {
        messages.push(ChatMessage::new("user", user.as_str()));
        messages.push(ChatMessage::new("assistant", answer.as_str()));
    }
    messages.push(ChatMessage::new("user", question));
    generator.chat_prompt(&messages)
}
