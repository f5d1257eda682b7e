//! The in-context row's prompts: a task's first training pairs as earlier turns of the same
//! chat, before the test question.
//!
//! The data files hold prompts already rendered by the chat template (one user turn with the
//! assistant's turn opened), so the user's text is recovered by rendering a marker through the
//! same template and matching what surrounds it; a prompt the template did not make is an
//! error, not a guess.

use crate::error::{Error, Result};
use crate::serve::input::chat::{ChatMessage, ChatTemplate};
use std::path::Path;

/// A marker no prompt holds: the user's text in the rendering that shows the template's frame.
const MARKER: &str = "\u{1}elx-user-turn\u{1}";

/// The in-context prompts of `test` (line, prompt, answer): the `examples` (line, prompt,
/// answer, from `train`) as earlier turns of the chat, then each test question's user turn
/// with the assistant's turn opened. With `chat`, prompts are the user's text; otherwise
/// they were rendered by `template`, and one it did not render is an error naming its file
/// and line.
pub(super) fn in_context_pairs(
    template: &ChatTemplate,
    chat: bool,
    examples: &[(usize, String, String)],
    train: &Path,
    test: &[(usize, String, String)],
    test_path: &Path,
) -> Result<Vec<(usize, String, String)>> {
    let rendered = template.render(&[ChatMessage::new("user", MARKER)], true)?;
    let (before, after) = rendered.split_once(MARKER).ok_or_else(|| {
        Error::Usage("the chat template does not show the user's text as written".into())
    })?;
    let user = |prompt: &str, source: &Path, line: usize| -> Result<String> {
        if chat {
            return Ok(prompt.to_string());
        }
        prompt
            .strip_prefix(before)
            .and_then(|p| p.strip_suffix(after))
            .map(str::to_string)
            .ok_or_else(|| {
                Error::bad_file(
                    source,
                    format!(
                        "line {line}: expected a prompt rendered by the model's chat template (one user turn, the assistant's turn opened), for the in-context row"
                    ),
                )
            })
    };
    let mut turns = Vec::with_capacity(2 * examples.len() + 1);
    for (line, prompt, answer) in examples {
        turns.push(ChatMessage::new("user", user(prompt, train, *line)?));
        turns.push(ChatMessage::new("assistant", answer.as_str()));
    }
    test.iter()
        .map(|(line, prompt, answer)| {
            let mut messages = turns.clone();
            messages.push(ChatMessage::new("user", user(prompt, test_path, *line)?));
            Ok((*line, template.render(&messages, true)?, answer.clone()))
        })
        .collect()
}
