//! Every subcommand's long help (`elx <command> --help`) ends with one or two examples;
//! the short help (`-h`) stays short. The examples themselves are parsed with clap by the
//! unit tests of src/cli/examples.rs; this checks what the built binary prints.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_elx"))
        .args(args)
        .output()
        .expect("run elx");
    assert!(o.status.success(), "elx {args:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The subcommand names listed by `elx --help`.
fn subcommands() -> Vec<String> {
    let top = help(&["--help"]);
    let start = top.find("Commands:").expect("a Commands section") + "Commands:".len();
    top[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_subcommand_long_help_ends_with_examples() {
    let cmds = subcommands();
    assert!(cmds.len() >= 9, "{cmds:?}");
    for cmd in &cmds {
        let long = help(&[cmd, "--help"]);
        let at = long
            .rfind("\nExamples:\n")
            .unwrap_or_else(|| panic!("`elx {cmd} --help` has no examples:\n{long}"));
        let section = &long[at..];
        // Each example: a `# what it does` line, then the command (with `\` continuations).
        let commands: Vec<&str> = section
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("elx "))
            .collect();
        let comments = section
            .lines()
            .filter(|l| l.trim_start().starts_with("# "))
            .count();
        assert!(
            (1..=2).contains(&comments) && commands.len() == comments,
            "`elx {cmd} --help`: {section}"
        );
        assert!(
            commands[0].starts_with(&format!("elx {cmd} ")) || commands[0] == format!("elx {cmd}"),
            "`elx {cmd} --help`: {section}"
        );
        // The section is the last thing printed: every line after the heading is an
        // example's comment, command, continuation or a blank line.
        let mut continued = false;
        for l in section.lines().skip(2) {
            let t = l.trim();
            assert!(
                t.is_empty() || t.starts_with("# ") || t.starts_with("elx ") || continued,
                "`elx {cmd} --help`: stray line {l:?} in {section}"
            );
            continued = t.ends_with('\\');
        }
        let short = help(&[cmd, "-h"]);
        assert!(!short.contains("Examples:"), "`elx {cmd} -h`:\n{short}");
    }
}
