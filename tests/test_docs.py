"""The README and docs/ quote only what the committed results files say.

Every section (the text under one heading) that quotes a measurement names its results files in a
line ``Source: bench/results/NAME.md, bench/results/NAME.json`` (or its enclosing section does:
``## `` covers its ``### ``, a ``# `` title nothing); each number in the section must
occur in one of them, up to the rounding it is quoted with (``198,743`` == ``198743``;
``98.79%`` == ``98.79`` or ``0.9879...``; ``1.2 KB`` == ``1.2 KB`` or ``1,234``). Exempt, visibly: command lines
(code spans and ``bash``/``python`` blocks, whose numbers are option values), words that hold a
digit (``uint8``, ``Food-11``, ``3x3``, ``4-bit``, ``2/255``), the numbers of numbered lists, and the few phrases of `NOT_MEASURED`.
Output blocks (```` ```text ````) are checked like prose: they are what a command printed.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = (README, REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md")))
EXAMPLES = REPO / "bench" / "results" / "readme_examples.json"
INSTALL = '.venv/bin/pip install -e ".[torch,test]"'

# Numbers in prose that are facts of the code or the world, not measurements (keep this short).
NOT_MEASURED = (
    "opset 17",          # the ONNX opset the exporter writes (edge.export.exporter.OPSET)
    "Zen 1",             # a CPU generation
    "layout version 1",  # the metadata layout the runtime accepts
    "Nagel et al. 2019", "Liu et al. 2017", "He et al. 2017", "Beyer et al. 2022",  # papers
)
HEADING = re.compile(r"^#{1,6} ")
FENCE = re.compile(r"^\s*```(\w*)")
SOURCE = re.compile(r"bench/results/[\w.-]+?\.(?:md|json)\b")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
LIST_NUMBER = re.compile(r"^\s*\d+\. ", re.M)
QUOTED = re.compile(r"(?<![\w.,/·])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<pct> ?%)?")
UNITS = {"x", "B", "KB", "MB", "GB", "ms", "s", "pt", "px", "min", "k", "M"}
UNIT_AFTER = re.compile(r"[A-Za-z_]+")
IN_FILE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Quote:
    """A measurement quoted in a doc: its text, value, decimals, whether a percentage, its scale."""
    text: str
    value: float
    decimals: int
    percent: bool
    scale: float  # 1000 for "KB", 1e6 for "MB": the file holds bytes


@dataclass
class Section:
    """The lines under one heading: where they start, the results files named (here or in an
    enclosing section: a ``## `` section's sources cover its ``### `` subsections), the checked text."""
    doc: str
    line: int
    heading: str
    sources: list[str]
    text: list[str]
    parent: Section | None = None

    @property
    def level(self) -> int:
        return len(self.heading) - len(self.heading.lstrip("#")) if self.heading.startswith("#") else 0

    def all_sources(self) -> list[str]:
        return self.sources + (self.parent.all_sources() if self.parent else [])


def sections(doc: str, text: str) -> list[Section]:
    """``text`` cut at its headings; command blocks dropped, output blocks and prose kept."""
    found = [Section(doc, 1, "(top)", [], [])]
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        opening = FENCE.match(line)
        if opening:
            fence = None if fence is not None else opening.group(1)
            continue
        if fence is not None:
            if fence == "text":
                found[-1].text.append(line)
        elif HEADING.match(line):
            section = Section(doc, number, line.strip(), [], [line])
            parent = next((s for s in reversed(found) if s.level < section.level), None)
            section.parent = parent if parent and parent.level >= 2 else None  # a title covers nothing
            found.append(section)
        elif line.lstrip("*_ ").startswith("Source:"):
            found[-1].sources += SOURCE.findall(line)
        else:
            found[-1].text.append(line)
    return found


def quotes(line: str) -> list[Quote]:
    """The measurements a text quotes (see the module's docstring for what is exempt)."""
    for phrase in NOT_MEASURED:
        line = line.replace(phrase, " ")
    line = LIST_NUMBER.sub("", LINK_TARGET.sub("]", CODE_SPAN.sub(" ", line)))
    found = []
    for match in QUOTED.finditer(line):
        start, end = match.span()
        if start >= 2 and line[start - 1] == "-" and line[start - 2].isalnum():
            continue  # Food-11: part of a name
        after = line[end:end + 2]
        if after[:1] in ("/", "_") or (after[:1] in ("-", ".") and after[1:].isalnum()):
            continue  # 2/255, 4-bit, 2.14.1: a fraction, a compound word, a version
        attached = UNIT_AFTER.match(line, end)
        if attached and (attached.group() not in UNITS or line[attached.end():attached.end() + 1].isalnum()):
            continue  # 3x3, 256x256, 8bit: part of a word
        spaced = UNIT_AFTER.match(line, end + 1) if after[:1] == " " else None
        unit = (attached or spaced).group() if (attached or spaced) else ""
        number = match.group("num")
        scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9}.get(unit, 1.0)
        decimals = len(number.partition(".")[2])
        found.append(Quote(match.group(), float(number.replace(",", "")), decimals, bool(match.group("pct")), scale))
    return found


class Numbers:
    """Every number a results file holds (md or json; strings inside the json too), sorted."""

    def __init__(self, text: str):
        self.values = sorted(float(n.replace(",", "")) for n in IN_FILE.findall(text))

    def near(self, value: float, tolerance: float) -> bool:
        i = bisect.bisect_left(self.values, value - tolerance)
        return i < len(self.values) and self.values[i] <= value + tolerance

    def holds(self, quote: Quote) -> bool:
        """``quote`` is one of the numbers, as quoted (rounded to its decimals; % as a fraction too)."""
        tolerance = 0.5 * 10 ** -quote.decimals + 1e-9
        if quote.percent and self.near(quote.value / 100, tolerance / 100):
            return True
        return self.near(quote.value, tolerance) or self.near(quote.value * quote.scale, tolerance * quote.scale)


def problems(doc: str, text: str, root: Path = REPO) -> list[str]:
    """Each quoted number its section's results files do not hold, and each source that is missing."""
    found, cache = [], {}
    for section in sections(doc, text):
        files, sources = [], section.all_sources()
        for source in sources:
            if source not in cache:
                path = root / source
                cache[source] = Numbers(path.read_text()) if path.is_file() else None
            if cache[source] is None:
                found.append(f"{doc}:{section.line} {section.heading}: source {source} does not exist")
            else:
                files.append(cache[source])
        for quote in quotes("\n".join(section.text)):  # whole, so a code span may wrap
            if not any(numbers.holds(quote) for numbers in files):
                where = ", ".join(sources) or "no Source: line"
                found.append(f"{doc}:{section.line} {section.heading}: {quote.text!r} not in {where}")
    return found


def _doc_problems(path: Path) -> list[str]:
    return problems(str(path.relative_to(REPO)), path.read_text())


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_quoted_number_is_in_the_results_file_its_section_names(path):
    assert _doc_problems(path) == []


def test_the_docs_folder_exists_and_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines: move details to docs/"
    assert len(DOCS) > 3  # README, bench/README and docs/*.md


def test_the_readme_links_only_to_files_that_exist():
    for target in re.findall(r"\]\(([^)#]+)", README.read_text()):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


def test_the_quick_start_prints_the_byte_count_its_results_file_records():
    recorded = json.loads(EXAMPLES.read_text())["quick_start_bytes"]
    assert f"wrote student_uint8.onnx: {recorded:,} bytes" in README.read_text()


def test_ci_installs_as_the_readme_says():
    assert INSTALL in README.read_text() and INSTALL in (REPO / ".ci" / "run").read_text()


def test_editing_a_quoted_number_turns_the_check_red():
    text = README.read_text()
    quick_start = json.loads(EXAMPLES.read_text())["quick_start_bytes"]  # the quick start's byte count
    original = f"{quick_start:,}"
    for edited in (f"{quick_start + 1:,}", f"{quick_start + 10:,}"):
        assert original in text
        assert problems("README.md", text) == [] and problems("README.md", text.replace(original, edited))


def test_editing_a_quoted_percentage_turns_the_check_red():
    text = (REPO / "docs" / "formats.md").read_text()
    assert "98.79%" in text
    assert problems("formats.md", text) == []
    assert any("98.97%" in p for p in problems("formats.md", text.replace("98.79%", "98.97%")))


def test_a_results_file_that_changes_turns_the_check_red(tmp_path):
    text = "## Size\n\nSource: bench/results/x.json\n\nThe file is 198,743 bytes, 98.79% agreement, 4.3 ms.\n"
    (tmp_path / "bench" / "results").mkdir(parents=True)
    result = tmp_path / "bench" / "results" / "x.json"
    result.write_text(json.dumps({"bytes": 198743, "agreement": 0.98792, "ms": 4.27}))
    assert problems("t.md", text, tmp_path) == []
    result.write_text(json.dumps({"bytes": 198690, "agreement": 0.98792, "ms": 4.27}))
    assert problems("t.md", text, tmp_path) == ["t.md:1 ## Size: '198,743' not in bench/results/x.json"]


def test_what_is_exempt_and_what_is_not(tmp_path):
    unsourced = "## Run\n\nIt took 12.5 s and wrote 1,024 bytes.\n"
    assert problems("t.md", unsourced, tmp_path) == ["t.md:1 ## Run: '12.5' not in no Source: line",
                                                     "t.md:1 ## Run: '1,024' not in no Source: line"]
    exempt = ("## Run\n\n`edge export --calib-images 250` on Food-11 with uint8 3x3 4-bit 2/255 opset 17.\n\n"
              "```bash\nedge train --epochs 30\n```\n")
    assert problems("t.md", exempt, tmp_path) == []
    output = "## Run\n\n```text\nwrote x.onnx: 5,555 bytes\n```\n"
    assert problems("t.md", output, tmp_path) == ["t.md:1 ## Run: '5,555' not in no Source: line"]
    missing = "## Run\n\nSource: bench/results/absent.md\n"
    assert problems("t.md", missing, tmp_path) == ["t.md:1 ## Run: source bench/results/absent.md does not exist"]
