"""Every fenced code block in README.md, docs/**/*.md and results/README.md is executed here.

The info string after the opening fence decides what happens to a block; there is one convention
for each thing a block can be, and any other info string (or none) fails the suite:

- ```python   run. The blocks of one file run in order in one namespace (each block may use what an
              earlier block of the same file defined), in a fresh temporary directory per file
              that holds a copy of results/. torch's global RNG is seeded with an unrelated value
              first, so a block whose shown output depends on random numbers must seed itself.
- ```python file=NAME  a script: written to NAME in that directory, not run in-process; a bash
              block of the same file must run it (``python NAME`` or ``torchrun … NAME``).
- ```bash     one ``muonscope …`` (or ``torchrun`` / ``python``) command per line, optionally
              after ``NAME=value`` settings
              (``\\`` continues a line, ``#`` starts a comment; a trailing ``# exits N`` states
              the expected exit code, else 0), run with this venv's CLI in the same directory as
              the file's Python blocks, in a user's environment (no MUONSCOPE_NS_DTYPE).
- ```bash slow  commands that take minutes (``make demo``, full sweeps): not run here. Each line is
              ``make TARGET`` (a target of the Makefile) or a ``muonscope`` command, and a block
              with a muonscope command names the tests that run its code path with smaller
              settings: ``# covered by tests/test_x.py::test_name`` (checked to exist).
- ```text     output, directly after a python or bash block (only blank lines between): what
              that block prints (stdout and stderr). Compared line by line: text equal up to
              runs of whitespace and of box-drawing rules, integers exactly, decimals within a
              relative 1e-3 or one unit of the last shown digit (the blocks are seeded and run
              in fp32 with one thread; other CPUs reorder fp32 sums, far below that tolerance);
              a line ``...`` stands for any number of lines. After a ``bash slow`` block it is
              recorded output, checked by its own test (``make demo``: test_make_demo_excerpt).
- ```diagram  a figure drawn in text (layers, data flow): nothing to run; counted.

Each test prints what it ran by kind (``pytest -rP tests/test_docs.py`` shows it); every parsed
python / bash / text block must have been run or compared, or the test fails.
"""

from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("muonscope")
KINDS = ("python", "python file=NAME", "bash", "bash slow", "text", "diagram")
_PY_FILE = re.compile(r"python file=([\w./-]+\.py)")
# programs a documented command may run (this venv's); make only in slow blocks
PROGRAMS = ("muonscope", "torchrun", "python")
# the environment every documented command runs in (one BLAS thread, fp32 NS, a fixed table width)
# as a user's: no MUONSCOPE_NS_DTYPE (blocks that show NS-dependent numbers pin their NS dtype)
DOC_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "120", "TERM": "dumb", "NO_COLOR": "1"}
UNSET = ("MUONSCOPE_NS_DTYPE",)
UNRELATED_SEED = 987_654_321


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    results = ROOT / "results" / "README.md"
    if results.exists():
        files.append(results)
    return files


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    kind: str
    code: str
    output: Block | None = None  # the text block that shows what this block prints
    shows: Block | None = None  # for a text block: the block whose output it is

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


@dataclass
class Doc:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def parse(path: Path) -> Doc:
    """Fenced blocks of a Markdown file, each text block attached to the block it shows."""
    doc = Doc(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    i, prev, prev_end = 0, None, -1
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], " ".join(m["info"].split()), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(m["indent"]):] if lines[i].startswith(m["indent"]) else lines[i])
            i += 1
        if i >= len(lines):
            doc.errors.append(f"{_rel(path)}:{start + 1}: unclosed code fence")
        block = Block(path, start + 1, info, "\n".join(body) + "\n")
        if info not in KINDS and not _PY_FILE.fullmatch(info):
            doc.errors.append(f"{block.where}: unknown block kind {info!r} (known: {', '.join(KINDS)})")
        if info == "text":
            between = lines[prev_end + 1:start] if prev is not None else ["x"]
            if prev is None or prev.kind not in ("python", "bash", "bash slow") or any(s.strip() for s in between):
                doc.errors.append(f"{block.where}: a text block must directly follow the python/bash "
                                  "block whose output it shows")
            elif prev.output is not None:
                doc.errors.append(f"{block.where}: {prev.where} already has an output block")
            else:
                prev.output, block.shows = block, prev
        doc.blocks.append(block)
        prev, prev_end = block, i
        i += 1
    return doc


def _commands(code: str) -> list[tuple[str, int]]:
    """(command, expected exit code) per logical line of a bash block; comments dropped."""
    out, cur = [], ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        line = cur + line
        cur = ""
        code_part, _, comment = line.partition("#") if not line.lstrip().startswith("#") else ("", "", line)
        m = re.search(r"exits (\d+)", comment)
        if code_part.strip():
            out.append((code_part.strip(), int(m[1]) if m else 0))
    return out


# ---------------------------------------------------------------------------------------------
# comparing output

_NUM = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|(?<![\w.])[-+]?\.\d+(?:[eE][-+]?\d+)?")
_RULES = re.compile(r"([─━═│┃]|-{3,})\1+")
ELLIPSIS = "..."


def _tokens(line: str, numbers: bool = True):
    out, pos = [], 0
    for m in _NUM.finditer(line):
        out.append(("s", line[pos:m.start()]))
        out.append(("n", m[0]) if numbers else ("s", "#"))
        pos = m.end()
    out.append(("s", line[pos:]))
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        if kind == "s":
            text = _RULES.sub(r"\1", " ".join(text.split()))
            if merged and merged[-1][0] == "s":
                merged[-1] = ("s", merged[-1][1] + " " + text)
                continue
        merged.append((kind, text))
    return [(k, " ".join(t.split()) if k == "s" else t) for k, t in merged]


def _number_close(shown: str, got: str) -> bool:
    a, b = shown.replace(",", ""), got.replace(",", "")
    if not re.search(r"[.eE]", a):
        return a.lstrip("+") == b.lstrip("+") or (re.search(r"[.eE]", b) is None and int(a) == int(b))
    x, y = float(a), float(b)
    mant, _, exp = a.lower().partition("e")
    decimals = len(mant.partition(".")[2])
    unit = 10.0 ** (-decimals + (int(exp) if exp else 0))
    return math.isclose(x, y, rel_tol=1e-3, abs_tol=unit * 1.0000001)


def line_matches(shown: str, got: str, numbers: bool = True) -> bool:
    ts, tg = _tokens(shown, numbers), _tokens(got, numbers)
    if len(ts) != len(tg):
        return False
    for (ks, s), (kg, g) in zip(ts, tg, strict=True):
        if ks != kg or (ks == "s" and s != g) or (ks == "n" and not _number_close(s, g)):
            return False
    return True


def _clean(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def output_matches(shown: str, got: str, numbers: bool = True) -> tuple[bool, str]:
    """Does ``got`` match the shown output (``...`` lines skip any number of lines)?"""
    exp, act = _clean(shown), _clean(got)
    memo: dict[tuple[int, int], bool] = {}

    def go(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[i, j]
        if i == len(exp):
            r = j == len(act)
        elif exp[i].strip() == ELLIPSIS:
            r = go(i + 1, j) or (j < len(act) and go(i, j + 1))
        else:
            r = j < len(act) and line_matches(exp[i], act[j], numbers) and go(i + 1, j + 1)
        memo[i, j] = r
        return r

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20 * (len(exp) + len(act)) + 1000))
    if go(0, 0):
        return True, ""
    # first shown line (outside ellipses) that has no match in order, for the message
    j = 0
    for line in exp:
        if line.strip() == ELLIPSIS:
            continue
        k = next((k for k in range(j, len(act)) if line_matches(line, act[k], numbers)), None)
        if k is None:
            return False, f"shown line not printed (in order):\n  {line}\nprinted:\n" + "\n".join(act)
        j = k + 1
    return False, "printed lines beyond those shown (end the output block with '...'?):\n" + "\n".join(act)


# ---------------------------------------------------------------------------------------------
# running


def _doc_env() -> dict[str, str]:
    env = dict(os.environ, **DOC_ENV)
    for k in UNSET:
        env.pop(k, None)
    env["PATH"] = f"{CLI.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_command(cmd: str, cwd: Path, timeout: float = 300) -> tuple[int, str]:
    argv, env = shlex.split(cmd), _doc_env()
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # NAME=value muonscope …
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    assert argv and argv[0] in PROGRAMS, f"documented shell commands run {', '.join(PROGRAMS)}, got {cmd!r}"
    exe = sys.executable if argv[0] == "python" else str(CLI.with_name(argv[0]))
    p = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout + p.stderr


@contextlib.contextmanager
def _doc_process_state(cwd: Path):
    import torch

    old_cwd, old_threads, old_env = os.getcwd(), torch.get_num_threads(), dict(os.environ)
    os.chdir(cwd)
    os.environ.update({k: v for k, v in DOC_ENV.items() if k not in ("TERM", "NO_COLOR")})
    for k in UNSET:
        os.environ.pop(k, None)
    torch.set_num_threads(1)
    torch.manual_seed(UNRELATED_SEED)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        torch.set_num_threads(old_threads)


def run_doc(doc: Doc, workdir: Path, namespace: dict | None = None) -> Counter:
    """Run the python and bash blocks of one file in ``workdir``; compare shown output."""
    counts: Counter = Counter()
    ns = namespace if namespace is not None else {"__name__": "__main__"}
    scripts = {m[1]: b for b in doc.blocks if (m := _PY_FILE.fullmatch(b.kind))}
    commands = " ".join(b.code for b in doc.blocks if b.kind in ("bash", "bash slow"))
    for name, b in scripts.items():
        assert re.search(rf"(?:python|torchrun)\b[^\n]*\s{re.escape(name)}\b", commands), \
            f"{b.where}: no bash block runs {name}"
    with _doc_process_state(workdir):
        for b in doc.blocks:
            if b.kind in (f"python file={n}" for n in scripts):
                (workdir / _PY_FILE.fullmatch(b.kind)[1]).write_text(b.code)
                counts["python file"] += 1
                continue
            if b.kind == "python":
                buf = io.StringIO()
                try:
                    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                        exec(compile(b.code, b.where, "exec"), ns)
                except Exception as exc:  # the block's own traceback, with its file and line
                    raise AssertionError(f"{b.where}: python block raised {type(exc).__name__}: {exc}\n"
                                         f"printed:\n{buf.getvalue()}") from exc
                printed = buf.getvalue()
            elif b.kind == "bash":
                cmds = _commands(b.code)
                assert cmds, f"{b.where}: bash block without a command"
                printed = ""
                for cmd, want in cmds:
                    rc, out = run_command(cmd, workdir)
                    assert rc == want, f"{b.where}: `{cmd}` exited {rc} (expected {want}):\n{out}"
                    printed += out
            else:
                continue
            counts[b.kind] += 1
            if b.output is not None:
                ok, why = output_matches(b.output.code, printed)
                assert ok, f"{b.output.where}: shown output of {b.where} does not match: {why}"
                counts["text"] += 1
    return counts


def _workdir(doc: Doc, tmp_path: Path) -> Path:
    if any("results/" in b.code for b in doc.blocks if b.kind in ("python", "bash")):
        shutil.copytree(ROOT / "results", tmp_path / "results",
                        ignore=shutil.ignore_patterns("*.png", "report_files", "*.pt"))
    return tmp_path


DOCS = [parse(p) for p in doc_files()]


def test_output_comparison_is_strict_where_it_should_be():
    assert output_matches("s_q50 0.061984 n=64", "s_q50 0.0619841 n=64")[0]   # within the shown digits
    assert not output_matches("s_q50 0.061984", "s_q50 0.062596")[0]          # a bf16-sized difference
    assert not output_matches("rows 48", "rows 49")[0]                        # integers exactly
    assert not output_matches("layer q", "layer k")[0]                        # text exactly
    assert output_matches("│ a │   1.5 │", "│ a   │ 1.5 │")[0]                  # table padding is free
    assert output_matches("head\n...\ntail", "head\nx\ny\ntail")[0]
    assert not output_matches("head\ntail", "head\nx\ntail")[0]             # no silent extra lines
    assert output_matches("1.0e-3", "0.001")[0] and not output_matches("2.07e-4", "2.17e-4")[0]


def test_parser_refuses_unknown_kinds_and_orphan_output(tmp_path):
    md = tmp_path / "page.md"
    md.write_text("```\nx\n```\n\nprose\n\n```text\n1\n```\n```python\nprint(1)\n```\n\n```text\n1\n```\n")
    errors = parse(md).errors
    assert len(errors) == 2 and "unknown block kind ''" in errors[0] and "must directly follow" in errors[1]


def test_every_block_has_a_known_kind_and_outputs_follow_their_code():
    errors = [e for d in DOCS for e in d.errors]
    assert not errors, "\n".join(errors)
    counts = Counter(b.kind for d in DOCS for b in d.blocks)
    print("code blocks by kind:", dict(sorted(counts.items())), "in", len(DOCS), "files")
    assert counts["python"] and counts["bash"] and counts["text"]


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.kind in ("python", "bash") or _PY_FILE.fullmatch(b.kind)
                                                          for b in d.blocks)],
                         ids=lambda d: str(d.path.relative_to(ROOT)))
def test_code_blocks_run_and_print_what_is_shown(doc, tmp_path):
    assert not doc.errors, "\n".join(doc.errors)
    if any(re.search(r"^\s*import .*\btransformers\b", b.code, re.M) for b in doc.blocks if b.kind == "python"):
        pytest.importorskip("transformers", reason="install the hf extra to run these docs")
    counts = run_doc(doc, _workdir(doc, tmp_path))
    want = Counter(b.kind for b in doc.blocks if b.kind in ("python", "bash"))
    want["python file"] = sum(1 for b in doc.blocks if _PY_FILE.fullmatch(b.kind))
    want["text"] = sum(1 for b in doc.blocks if b.kind == "text" and b.shows.kind != "bash slow")
    print(f"{doc.path.relative_to(ROOT)}: ran {dict(counts)}")
    assert counts == +want, f"ran {dict(counts)}, parsed {dict(want)}"


def test_readme_python_runs_twice_in_the_same_directory(tmp_path):
    """What a newcomer does: paste the README's snippets, then paste them again."""
    doc = next(d for d in DOCS if d.path.name == "README.md" and d.path.parent == ROOT)
    py = Doc(doc.path, [b for b in doc.blocks if b.kind == "python"])
    workdir = _workdir(doc, tmp_path)
    run_doc(py, workdir)
    run_doc(py, workdir)


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, re.M))


def test_slow_blocks_are_make_targets_or_covered_by_named_tests():
    targets = _make_targets()
    slow = [b for d in DOCS for b in d.blocks if b.kind == "bash slow"]
    assert slow
    for b in slow:
        covered = re.findall(r"covered by ((?:tests/\S+\.py::\w+[ ,]*)+)", b.code)
        names = [t for group in covered for t in re.split(r"[ ,]+", group) if t]
        for cmd, _ in _commands(b.code):
            argv = shlex.split(cmd)
            if argv[0] == "make":
                assert len(argv) >= 2 and all(t in targets for t in argv[1:]), \
                    f"{b.where}: `{cmd}` is not a Makefile target"
            else:
                while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
                    argv.pop(0)
                assert names, f"{b.where}: `{cmd}` is not run here; name its test with '# covered by tests/…::test_…'"
                if argv[0] == "muonscope":  # the covering tests exercise that command's code path
                    sub = argv[1]
                    assert any(sub in (ROOT / n.partition("::")[0]).read_text() for n in names), \
                        f"{b.where}: none of {names} mentions the '{sub}' command"
        for name in names:
            file, _, func = name.partition("::")
            tree = ast.parse((ROOT / file).read_text())
            assert any(isinstance(n, ast.FunctionDef) and n.name == func for n in ast.walk(tree)), \
                f"{b.where}: covering test {name} does not exist"


# ---------------------------------------------------------------------------------------------
# the make demo excerpt


def _demo_recipe() -> list[list[str]]:
    text = (ROOT / "Makefile").read_text()
    m = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert m, "Makefile has no demo recipe"
    return [shlex.split(line.strip()) for line in m[1].splitlines() if line.strip()]


def _skeleton(lines: list[str]) -> list[str]:
    """The structural lines, with a table header that rich wrapped over several lines (narrow
    terminal, long cells) merged cell by cell into one."""
    out: list[str] = []
    header: list[list[str]] = []
    for line in [*lines, ""]:
        if line.strip().startswith("┃"):
            header.append([c.strip() for c in line.strip().strip("┃").split("┃")])
            continue
        if header:
            if len({len(h) for h in header}) == 1:
                cells = [" ".join(filter(None, col)) for col in zip(*header, strict=True)]
                out.append("┃ " + " ┃ ".join(cells) + " ┃")
            else:
                out.extend("┃ " + " ┃ ".join(h) + " ┃" for h in header)
            header = []
        if _is_skeleton(line):
            out.append(line)
    return out


def _is_skeleton(line: str) -> bool:
    """Lines that give the demo output its structure: section rules, table titles and header rows,
    and the criterion / wrote lines."""
    s = line.strip()
    return bool(s) and (s.startswith(("─", "┃", "criterion:", "wrote ")) or "Newton-Schulz scalar maps" in s)


def test_make_demo_excerpt(tmp_path):
    """README's make-demo excerpt: the NS table exactly (the recipe's first command, run as is),
    the rest in structure (every section rule, table title, header row, criterion and wrote line
    in order; every table row with its table's columns) against the demo run at a small size."""
    readme = next(d for d in DOCS if d.path.name == "README.md" and d.path.parent == ROOT)
    demo_blocks = [b for b in readme.blocks if b.kind == "bash slow" and "make demo" in b.code]
    assert len(demo_blocks) == 1 and demo_blocks[0].output is not None, "README shows make demo's output once"
    shown = _clean(demo_blocks[0].output.code)
    recipe = _demo_recipe()
    assert [argv[1] for argv in recipe] == ["ns", "demo"], recipe
    out = tmp_path / "demo-out"  # the Makefile's default DEMO_OUT, relative to where make runs

    def argv_of(argv):
        return [a.replace("$(DEMO_OUT)", "demo-out") for a in argv[1:]]

    ns = subprocess.run([str(CLI), *argv_of(recipe[0])], env=_doc_env(), capture_output=True, text=True,
                        timeout=120, cwd=tmp_path)
    assert ns.returncode == 0, ns.stderr
    first_rule = next(i for i, s in enumerate(shown) if s.startswith("─"))
    ok, why = output_matches("\n".join(shown[:first_rule]) + "\n...", ns.stdout)
    assert ok, f"NS table of the make demo excerpt: {why}"

    small = ["--presets", "d32,d48,d64", "--steps", "100"]  # 3 sizes, 11 spectra per trajectory
    demo = subprocess.run([str(CLI), *argv_of(recipe[1]), *small], env=_doc_env(), capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    got = _clean(ns.stdout + demo.stdout + demo.stderr)
    shown_skeleton, got_skeleton = _skeleton(shown), _skeleton(got)
    ok, why = output_matches("\n".join(f"...\n{s}" for s in shown_skeleton) + "\n...",
                             "\n".join(got_skeleton), numbers=False)
    assert ok, f"make demo excerpt, structure: {why}"
    # table rows: as many cells as the header above them has
    header = None
    for s in shown:
        if s.startswith("┃"):
            header = s.count("┃")
        elif s.startswith("│"):
            assert header is not None and s.count("│") == header, f"excerpt row does not fit its table: {s}"
    assert (out / "report.html").exists() and (out / "plan.json").exists()


# ---------------------------------------------------------------------------------------------
# links, API reference, strict build

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    bad = []
    for path in [*doc_files(), *ROOT.glob("*.md"), *sorted((ROOT / "results").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            file = target.split("#")[0]
            if file and not (path.parent / file).exists():
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, "broken links:\n" + "\n".join(bad)


def _public_modules() -> set[str]:
    out = set()
    for f in (ROOT / "src" / "muonscope").rglob("*.py"):
        rel = f.relative_to(ROOT / "src").with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts[1:]) or parts[1:2] == ["cli"] or len(parts) == 1:
            continue
        out.add(".".join(parts))
    return out


def test_api_reference_covers_every_public_module():
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: ([\w.]+)", page.read_text(), re.M))
    missing = sorted(_public_modules() - documented)
    assert not missing, f"modules missing from docs/api/*.md: {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert not [p for p in pages if p not in nav], "every docs page is in the mkdocs nav"


def test_mkdocs_build_is_strict_clean(tmp_path):
    pytest.importorskip("mkdocs", reason="install the docs extra (make test does) to build the API reference")
    pytest.importorskip("mkdocstrings_handlers.python", reason="install the docs extra (mkdocstrings[python])")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    warnings_ = [ln for ln in (p.stdout + p.stderr).splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert p.returncode == 0 and not warnings_, "\n".join(warnings_) or p.stderr
    html = (tmp_path / "site" / "api" / "optim" / "index.html").read_text()
    assert "muonscope.optim.muon.Muon" in html  # the reference is generated from the docstrings
    leaked = [p.name for p in (tmp_path / "site").rglob("*.html") if "```" in p.read_text(encoding="utf-8")]
    assert not leaked, f"fences rendered as text (info-string options not stripped by docs/hooks): {leaked}"
