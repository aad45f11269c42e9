"""The README's commands exist as it shows them: every `lowbit-gguf` command line in its shell code blocks names
real subcommands and options (a method's config and --set fields parse), every `make` target is in the Makefile,
every `tools/` script is there and executable; and every link to a file of the repository resolves, in the README
and in docs/."""

import os
import re
import shlex
from pathlib import Path

import click
import pytest

from lowbit_gguf.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")", "$(", "`"}


def code_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the opening fence, lines) of each fenced code block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current = (line[3:].strip().lower(), number, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"README.md: the code block opened on line {current[1]} is not closed"
    return blocks


def shell_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command line) of the shell code blocks, continuation lines joined."""
    out = []
    for language, start, lines in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        pending, first = "", None
        for offset, line in enumerate(lines, 1):
            first = first or start + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((first, pending + line))
            pending, first = "", None
        if pending:
            out.append((first, pending))
    return out


def commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line (split at pipes, lists and command substitutions; a comment is a word
    that starts with #), each without its leading VAR=value assignments."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()`")
    lexer.whitespace_split = True
    lexer.commenters = ""  # shlex would also cut `a#b`, one word to the shell
    out, current = [], []
    for token in lexer:
        if token.startswith("#"):
            break
        if token in SEPARATORS or set(token) <= set(";&|()`"):
            out.append(current)
            current = []
            continue
        if token.endswith("$") and not current and "=" in token:  # BIN=$(...: the substitution starts a command
            continue
        current.append(token)
    out.append(current)
    return [dropping_assignments(c) for c in out if dropping_assignments(c)]


def dropping_assignments(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    return words


def option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def find_option(command: click.Command, name: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def check_lowbit_gguf(words: list[str]) -> list[str]:
    """What is wrong with one `lowbit-gguf ...` command line; empty when nothing is."""
    command, path, args = cli, ["lowbit-gguf"], words[1:]
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in command.commands:
            return [f"`{' '.join(path)}` has no subcommand {name!r} (it has {sorted(command.commands)})"]
        command = command.commands[name]
        path.append(name)
    if isinstance(command, click.Group):
        return [f"`{' '.join(path)}` needs a subcommand"]
    problems, values = [], {}
    args = [a.strip("[]") for a in args]
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg == "-" or re.fullmatch(r"-\d.*", arg):
            continue
        name, _, inline = arg.partition("=")
        option = find_option(command, name)
        if option is None:
            if name != "--help":
                problems.append(f"`{' '.join(path)}` has no option {name} (it has {sorted(option_names(command))})")
            continue
        if option.is_flag or option.count:
            continue
        value = inline or (args[i + 1] if i + 1 < len(args) else None)
        if value is None:
            problems.append(f"`{' '.join(path)} {name}` needs a value")
            continue
        values.setdefault(option.name, []).append(value)
        if isinstance(option.type, click.Choice) and value not in option.type.choices:
            problems.append(f"`{' '.join(path)} {name} {value}`: not one of {list(option.type.choices)}")
    if "method" in values:
        problems += check_method(values["method"][0], values.get("config", [None])[0], values.get("overrides", []))
    return problems


def check_method(method: str, config: str | None, overrides: list[str]) -> list[str]:
    from lowbit_gguf.methods import get_method

    try:
        get_method(method).parse_config(config, dict(o.partition("=")[::2] for o in overrides))
    except Exception as exc:  # the command line would refuse it the same way
        return [f"--method {method} --config {config} {overrides}: {exc}"]
    return []


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.MULTILINE)}


def check_words(words: list[str]) -> list[str]:
    program = words[0]
    if program == "lowbit-gguf":
        return check_lowbit_gguf(words)
    if program == "make":
        targets = make_targets()
        return [f"the Makefile has no target {t!r}" for t in words[1:] if not t.startswith("-") and "=" not in t
                and t not in targets]
    if program.startswith("tools/") or program.startswith("./tools/"):
        path = ROOT / program
        if not path.is_file():
            return [f"{program} does not exist"]
        if not os.access(path, os.X_OK):
            return [f"{program} is not executable"]
    return []


def problems_of(text: str) -> list[str]:
    out = []
    for number, line in shell_lines(text):
        for words in commands(line):
            out += [f"README.md:{number}: {p}" for p in check_words(words)]
    return out


def test_readme_commands_exist_with_their_options():
    lines = [words for _, line in shell_lines(README.read_text()) for words in commands(line)]
    assert sum(words[0] == "lowbit-gguf" for words in lines) >= 10  # the parser still finds the commands
    assert [] == problems_of(README.read_text())


def test_the_readme_test_command_is_what_ci_runs():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert any(words == ["make", "test"] for _, line in shell_lines(README.read_text()) for words in commands(line))


@pytest.mark.parametrize("line, wrong", [
    ("lowbit-gguf quantize M --method aqlm --config 2x8 --no-such-flag -o x.gguf", "no option --no-such-flag"),
    ("lowbit-gguf runtime biuld", "no subcommand 'biuld'"),
    ("lowbit-gguf convert M -o x.gguf --type q5_0", "not one of"),
    ("lowbit-gguf quantize M --method aqlm --config 3y8 -o x.gguf", "--config 3y8"),
    ("lowbit-gguf quantize M --method aqlm --set no_field=1 -o x.gguf", "no_field"),
    ("X=$(lowbit-gguf runtime build --cudaa | sed -n 's/a/b/p')", "no option --cudaa"),
    ("make demo tset  # a comment: --ignored", "no target 'tset'"),
    ("tools/no-such-tool --x", "does not exist"),
])
def test_the_check_finds_what_is_wrong(line, wrong):
    problems = problems_of(f"```bash\n{line}\n```\n")
    assert len(problems) == 1 and wrong in problems[0], problems


def test_the_check_passes_continuations_comments_and_other_languages():
    text = ("```bash\nlowbit-gguf quantize M --method aqlm \\\n  --config 2x8 -o x.gguf   # --not-checked\n```\n"
            "```python\nlowbit-gguf --not-shell\n```\n")
    assert [] == problems_of(text)
    assert [["lowbit-gguf", "ppl", "a#b.gguf"]] == commands("lowbit-gguf ppl a#b.gguf # --not-checked")
    (number, line), = shell_lines(text)
    assert number == 2 and line.split() == "lowbit-gguf quantize M --method aqlm --config 2x8 -o x.gguf".split() + [
        "#", "--not-checked"]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (outside code blocks)."""
    out, fenced = set(), False
    for line in path.read_text().splitlines():
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#+ ", line):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_links_to_repository_files_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https: and the like
        file, _, anchor = target.partition("#")
        path = doc.parent / file if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_readme_links_every_doc_and_stays_short():
    text = README.read_text()
    for name in ("format", "methods", "kernels", "results", "development"):
        assert f"(docs/{name}.md)" in text
    assert len(text.splitlines()) <= 160
    for doc in [README, *(ROOT / "docs").glob("*.md")]:
        long = [n for n, line in enumerate(doc.read_text().splitlines(), 1) if len(line) > 120]
        assert not long, f"{doc.name}: lines over 120 columns: {long}"
