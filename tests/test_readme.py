"""README.md's code blocks: every fenced bash / sh / python block is marked, and the ones
marked to run do run (on a tiny setting, from a scratch folder).

The marker is an HTML comment on the line right before the block's opening fence:

    <!-- readme-test: run -->                          run it (bash: ``bash -euo pipefail``)
    <!-- readme-test: run, slow -->                    run it, as a slow test (over ~20 s)
    <!-- readme-test: run; replace `A` with `B` -->    run it with text A replaced by B (a tiny
                                                       setting; A must occur in the block)
    <!-- readme-test: skip (reason) -->                never run it; the reason is required

A bash / sh / python block without a marker fails the test, as does a malformed marker. A
block runs in a temporary folder that links the repository's top-level entries (so its
relative paths work and what it writes stays in the folder) and ``.venv`` to this
interpreter's environment, with ``PYTHONPATH=src`` and one OpenMP thread.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CODE_LANGS = {"bash", "sh", "shell", "python", "py"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
REPLACE = re.compile(r"replace\s+`(?P<a>[^`]+)`\s+with\s+`(?P<b>[^`]*)`")
TIMEOUT_S = 600


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # the marker's body, None where there is none
    run: bool = False
    slow: bool = False
    skip_reason: str = ""
    replacements: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""


def parse_marker(b: Block) -> None:
    """Fill b.run / slow / skip_reason / replacements from its marker, or b.error."""
    body = b.marker
    if body is None:
        b.error = "no <!-- readme-test: run | skip (reason) --> marker on the line before it"
        return
    if body.startswith("skip"):
        m = re.fullmatch(r"skip\s*\((?P<reason>.+)\)", body)
        if not m or not m.group("reason").strip():
            b.error = f"skip marker without a reason: {body!r}"
        else:
            b.skip_reason = m.group("reason").strip()
        return
    if not body.startswith("run"):
        b.error = f"marker is neither run nor skip: {body!r}"
        return
    b.run = True
    rest = body[3:].strip()
    if rest.startswith(","):
        flag, _, rest = rest[1:].strip().partition(";")
        if flag.strip() != "slow":
            b.error = f"unknown run flag {flag.strip()!r} (only 'slow')"
            return
        b.slow = True
        rest = rest.strip()
    elif rest.startswith(";"):
        rest = rest[1:].strip()
    elif rest:
        b.error = f"cannot read the marker: {body!r}"
        return
    for part in filter(None, (p.strip() for p in rest.split(";"))):
        m = REPLACE.fullmatch(part)
        if not m:
            b.error = f"cannot read {part!r} (expected: replace `A` with `B`)"
            return
        if m.group("a") not in b.code:
            b.error = f"replace: `{m.group('a')}` does not occur in the block"
            return
        b.replacements.append((m.group("a"), m.group("b")))


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of a code language, with the marker on the line before its fence."""
    lines = text.split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^(```+)\s*(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        if lang in CODE_LANGS:
            prev = lines[i - 1] if i > 0 else ""
            mm = MARKER.match(prev)
            b = Block(line=i + 1, lang=lang, code="\n".join(lines[i + 1:j]) + "\n", marker=mm.group("body") if mm else None)
            parse_marker(b)
            blocks.append(b)
        i = j + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_every_code_block_is_marked():
    """Every bash / python block says whether it runs (and a skip says why)."""
    assert BLOCKS, "README.md has no code blocks"
    bad = [f"README.md:{b.line} ({b.lang}): {b.error}" for b in BLOCKS if b.error]
    assert not bad, "\n".join(bad)


def test_marker_parser():
    """The marker grammar, on made-up blocks."""
    text = ("<!-- readme-test: run; replace `run(1000)` with `run(2)` -->\n```python\nx.run(1000)\n```\n"
            "<!-- readme-test: run, slow -->\n```bash\necho hi\n```\n"
            "<!-- readme-test: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n"
            "<!-- readme-test: skip -->\n```sh\nls\n```\n"
            "```python\nprint(1)\n```\n"
            "```\nnot code\n```\n")
    b = readme_blocks(text)
    assert len(b) == 5
    assert b[0].run and not b[0].slow and b[0].replacements == [("run(1000)", "run(2)")] and not b[0].error
    assert b[1].run and b[1].slow and not b[1].error
    assert not b[2].run and b[2].skip_reason == "needs a GPU"
    assert "without a reason" in b[3].error
    assert "no <!-- readme-test" in b[4].error


def scratch(tmp_path: Path) -> Path:
    """A folder that looks like the repository (links), with .venv -> this interpreter's env."""
    for entry in ROOT.iterdir():
        if entry.name in {".git", ".venv", "outputs"} or entry.name.startswith("."):
            continue
        (tmp_path / entry.name).symlink_to(entry)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def run_block(b: Block, tmp_path: Path) -> None:
    code = b.code
    for a, new in b.replacements:
        code = code.replace(a, new)
    cwd = scratch(tmp_path)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    if b.lang in {"python", "py"}:
        script = tmp_path / "readme_block.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", code]
    p = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert p.returncode == 0, (f"README.md:{b.line} ({b.lang}) exited {p.returncode}\n--- code\n{code}"
                               f"--- stdout (tail)\n{p.stdout[-3000:]}\n--- stderr (tail)\n{p.stderr[-3000:]}")


def _param(b: Block):
    marks = [pytest.mark.slow] if b.slow else []
    if not b.run:
        marks.append(pytest.mark.skip(reason=b.skip_reason or b.error or "not a run block"))
    return pytest.param(b, id=f"L{b.line}-{b.lang}", marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path):
    """A run block exits 0 (a skip block is reported as skipped, with its reason)."""
    if block.error:
        pytest.fail(f"README.md:{block.line}: {block.error}")
    run_block(block, tmp_path)
