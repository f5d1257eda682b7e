//! Text around generation: the files of an imported decoder folder (tokenizer, chat template,
//! special tokens), prompts to ids, and ids back to text as it streams, cut at stop strings.

use crate::error::{Error, Result};
use crate::graph::llama::files::{CONFIG_FILE, MODEL_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE};
use crate::serve::backend::WeightFormat;
use std::path::{Path, PathBuf};

/// Largest tokenizer.json read whole (real ones are a few MB).
const MAX_TOKENIZER_BYTES: u64 = 256 * 1024 * 1024;
/// Largest config or tokenizer_config.json read (real ones are a few KB; a chat template a
/// few tens of KB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A decoder's files: `model.onnx` and, beside it, what `elx import-gguf` writes (or a HF
/// folder holds): `tokenizer.json`, `tokenizer_config.json` (chat template, special tokens)
/// and `config.json` (end-of-sequence ids).
#[derive(Clone, Debug, Default)]
pub struct DecoderFiles {
    /// The ONNX model.
    pub model: PathBuf,
    /// `tokenizer.json`, if beside the model.
    pub tokenizer: Option<PathBuf>,
    /// The Jinja chat template, if any.
    pub chat_template: Option<String>,
    /// The beginning-of-sequence text, if any.
    pub bos_token: Option<String>,
    /// The end-of-sequence (end-of-turn) text, if any.
    pub eos_token: Option<String>,
    /// End-of-sequence ids from `config.json` (`eos_token_id`: a number or a list).
    pub eos_ids: Vec<u32>,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(Error::bad_file(
            path,
            format!(
                "expected at most {MAX_CONFIG_BYTES} bytes, found {}",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("expected a JSON object: {e}")))?;
    if !v.is_object() {
        return Err(Error::bad_file(path, "expected a JSON object"));
    }
    Ok(Some(v))
}

/// A special token field: a string, or an object with `content` (older HF files).
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl DecoderFiles {
    /// The token that ends an assistant's turn: the tokenizer's end-of-sequence text if it is
    /// one token of `tokenizer`, else config.json's first `eos_token_id`. Training appends it
    /// to each answer; generation stops at it.
    pub fn end_of_turn(&self, tokenizer: &PromptTokenizer) -> Result<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
            .or(self.eos_ids.first().copied())
            .ok_or_else(|| {
                Error::bad_file(
                    &self.model,
                    "expected an end-of-sequence token (tokenizer_config.json `eos_token` or config.json `eos_token_id`), found none",
                )
            })
    }

    /// The files of the decoder at `path`: a folder holding `model.onnx`, or the model file
    /// itself. Missing companions are `None`; malformed ones are errors naming the file.
    pub fn open(path: &Path) -> Result<DecoderFiles> {
        let model = if path.is_dir() {
            path.join(MODEL_FILE)
        } else {
            path.to_path_buf()
        };
        if !model.is_file() {
            return Err(Error::bad_file(
                &model,
                "expected the decoder's ONNX model (`elx import-gguf FILE -o DIR` writes DIR/model.onnx), found none",
            ));
        }
        let dir = model.parent().unwrap_or(Path::new("."));
        let tokenizer = Some(dir.join(TOKENIZER_FILE)).filter(|p| p.is_file());
        let mut files = DecoderFiles {
            model: model.clone(),
            tokenizer,
            ..Default::default()
        };
        let tc_path = dir.join(TOKENIZER_CONFIG_FILE);
        if let Some(tc) = read_json(&tc_path)? {
            files.chat_template = match tc.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(Error::bad_file(
                        &tc_path,
                        format!("field `chat_template`: expected a string, found {other}"),
                    ));
                }
            };
            files.bos_token = token_text(tc.get("bos_token"));
            files.eos_token = token_text(tc.get("eos_token"));
        }
        let c_path = dir.join(CONFIG_FILE);
        if let Some(c) = read_json(&c_path)? {
            let ids = match c.get("eos_token_id") {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| x.as_u64())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        Error::bad_file(&c_path, "field `eos_token_id`: expected token ids")
                    })?,
                Some(x) => vec![x.as_u64().ok_or_else(|| {
                    Error::bad_file(
                        &c_path,
                        format!("field `eos_token_id`: expected a token id, found {x}"),
                    )
                })?],
            };
            files.eos_ids = ids
                .into_iter()
                .map(|i| {
                    u32::try_from(i).map_err(|_| {
                        Error::bad_file(
                            &c_path,
                            format!("field `eos_token_id`: {i} is out of range"),
                        )
                    })
                })
                .collect::<Result<_>>()?;
        }
        Ok(files)
    }
}

/// A tokenizer for prompts and streamed output.
pub struct PromptTokenizer {
    path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json` (bounded in size).
    pub fn open(path: &Path) -> Result<PromptTokenizer> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if meta.len() > MAX_TOKENIZER_BYTES {
            return Err(Error::bad_file(
                path,
                format!(
                    "expected a tokenizer.json under {MAX_TOKENIZER_BYTES} bytes, found {}",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::bad_file(
                path,
                format!("expected a HF tokenizers tokenizer.json: {e}"),
            )
        })?;
        Ok(PromptTokenizer {
            path: path.to_path_buf(),
            tokenizer,
        })
    }

    /// The ids of `text` (special tokens written in it, e.g. `<|im_start|>`, become their
    /// ids; the tokenizer's own post-processing, e.g. a BOS, is added when `add_special`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, add_special).map_err(|e| {
            Error::bad_file(&self.path, format!("could not tokenize {text:?}: {e}"))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::bad_file(&self.path, format!("could not decode {ids:?}: {e}")))
    }

    /// The text of `ids` with special tokens left out: what a reader sees of an answer.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::bad_file(&self.path, format!("could not decode {ids:?}: {e}")))
    }

    /// The id of a token's text, if it is one token.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.tokenizer.token_to_id(text)
    }
}

/// Turns a stream of generated ids into text pieces as they become final: a piece is held
/// back while it ends inside a UTF-8 character (byte-level tokens split characters) or while
/// it could be the start of a stop string; the text ends just before the first stop string.
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    /// A stream cut at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> TextStream {
        TextStream {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Whether a stop string was reached (later ids are ignored).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds `id`; returns the text that became final (possibly empty).
    pub fn push(&mut self, tok: &PromptTokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        self.text = tok.decode(&self.ids)?;
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            return Ok(self.take(at.max(self.emitted)));
        }
        if self.text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        // Hold back the longest tail that is a proper prefix of a stop string.
        let mut end = self.text.len();
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..k]) {
                    end = end.min(self.text.len() - k);
                }
            }
        }
        Ok(self.take(end.max(self.emitted)))
    }

    /// The text still held back (at the end of generation it is final).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let end = self.text.len();
        self.take(end)
    }

    fn take(&mut self, end: usize) -> String {
        let piece = self.text.get(self.emitted..end).unwrap_or("").to_string();
        self.emitted = end;
        piece
    }
}

/// A decoder with its tokenizer and special tokens, from a model folder: what `elx generate`,
/// the C API and bindings open, so that each of them only fills options and prints.
pub struct TextGenerator {
    generator: super::Generator,
    tokenizer: PromptTokenizer,
    files: DecoderFiles,
    base_task: crate::serve::store::TaskId,
    stop_tokens: Vec<u32>,
}

impl std::fmt::Debug for TextGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextGenerator")
            .field("model", &self.files.model)
            .finish()
    }
}

/// What one token of [`TextGenerator::generate`] brought.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextPiece<'a> {
    /// The token; `None` for the text held back until generation ended.
    pub token: Option<super::Token>,
    /// The text that became final with it (possibly empty: a character or a possible stop
    /// string still incomplete).
    pub text: &'a str,
}

impl TextGenerator {
    /// Opens the decoder at `model` (a folder or its `model.onnx`, with `tokenizer.json`
    /// beside it) for the bound bundle at `bundle`, or alone (`None`: the base model), on
    /// `backend`.
    pub fn open(
        model: &Path,
        bundle: Option<&Path>,
        backend: crate::serve::Backend,
    ) -> Result<TextGenerator> {
        Self::open_with(model, bundle, backend, WeightFormat::F32)
    }

    /// [`TextGenerator::open`] with the base weights stored in `weights`.
    pub fn open_with(
        model: &Path,
        bundle: Option<&Path>,
        backend: crate::serve::Backend,
        weights: WeightFormat,
    ) -> Result<TextGenerator> {
        let files = DecoderFiles::open(model)?;
        let tok_path = files.tokenizer.clone().ok_or_else(|| {
            Error::bad_file(
                &files.model,
                "expected a tokenizer.json beside the model (`elx import-gguf` writes one), found none",
            )
        })?;
        let tokenizer = PromptTokenizer::open(&tok_path)?;
        let (generator, base_task) = match bundle {
            Some(b) => {
                let bundle = crate::bundle::Bundle::read(b)?;
                let g = super::Generator::load_with(&files.model, &bundle, backend, weights)?;
                let base = crate::bundle::CoeffFile::base(&bundle.manifest.subspace_id);
                let id = g.engine().insert_task(&base)?;
                (g, id)
            }
            None => super::Generator::load_base_with(&files.model, backend, weights)?,
        };
        let mut stop_tokens = files.eos_ids.clone();
        if let Some(id) = files
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_id(t))
            && !stop_tokens.contains(&id)
        {
            stop_tokens.push(id);
        }
        Ok(TextGenerator {
            generator,
            tokenizer,
            files,
            base_task,
            stop_tokens,
        })
    }

    /// The generator (engine, tasks, token-level generation).
    pub fn generator(&self) -> &super::Generator {
        &self.generator
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The model's files (chat template, special tokens).
    pub fn files(&self) -> &DecoderFiles {
        &self.files
    }

    /// The prompt for a conversation, rendered by the model's chat template
    /// ([`crate::serve::input::chat::ChatTemplate`]) with the assistant's turn opened; an
    /// error when the model has no template.
    pub fn chat_prompt(
        &self,
        messages: &[crate::serve::input::chat::ChatMessage],
    ) -> Result<String> {
        let source = self.files.chat_template.as_deref().ok_or_else(|| {
            Error::bad_file(
                &self.files.model,
                "expected a chat template in the tokenizer_config.json beside the model, found none",
            )
        })?;
        let t = crate::serve::input::chat::ChatTemplate::new(
            source,
            self.files.bos_token.as_deref().unwrap_or(""),
            self.files.eos_token.as_deref().unwrap_or(""),
        )?;
        t.render(messages, true)
    }

    /// The task that runs the base model (zero coefficients).
    pub fn base_task(&self) -> crate::serve::store::TaskId {
        self.base_task
    }

    /// The ids that end generation: `config.json`'s `eos_token_id` and the tokenizer's
    /// end-of-sequence token.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// Generates after `prompt` (text, encoded with the tokenizer's special tokens) on
    /// `task`, stopping at the model's stop tokens, `options.max_tokens` or the first of
    /// `stops`; `on_piece` gets every token with the text it made final, and stops
    /// generation by returning false. Returns why it stopped.
    pub fn generate(
        &self,
        task: crate::serve::store::TaskId,
        prompt: &str,
        options: &super::GenerateOptions,
        stops: &[String],
        on_piece: &mut dyn FnMut(TextPiece<'_>) -> Result<bool>,
    ) -> Result<super::Finish> {
        let ids = self.tokenizer.encode(prompt, true)?;
        let mut options = options.clone();
        for &t in &self.stop_tokens {
            if !options.stop_tokens.contains(&t) {
                options.stop_tokens.push(t);
            }
        }
        let mut stream = TextStream::new(stops);
        let mut failed: Option<Error> = None;
        let finish = self
            .generator
            .generate(task, &ids, &options, &mut |token| {
                let step = stream.push(&self.tokenizer, token.id).and_then(|text| {
                    on_piece(TextPiece {
                        token: Some(token),
                        text: &text,
                    })
                });
                match step {
                    Ok(go) => go && !stream.stopped(),
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if stream.stopped() {
            return Ok(super::Finish::Stop);
        }
        let rest = stream.finish();
        if !rest.is_empty() {
            on_piece(TextPiece {
                token: None,
                text: &rest,
            })?;
        }
        Ok(finish)
    }
}
