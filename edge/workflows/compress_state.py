"""Reading back an `edge compress` record (``state.json``) for ``--resume``: evidence, not instructions.

The record names the files a search made (each point's ONNX file, each round's model file) and the
numbers it chooses by, and ``--resume`` continues from it: a damaged or edited record must be refused
with one line naming state.json and the field, before anything is written, never followed. `read_state`
owns that: a regular file of bounded size and nesting, JSON, every field the search and the report read
typed and range-checked (a keep fraction lies in (0, 1]), no field the search does not write, file names
that are plain names inside the work folder; and every candidate ONNX file identified by the SHA-256 the
search recorded when it wrote it, a single link, carrying a valid edge checksum (`edge.codec.metadata`).
`chosen_bytes` checks the chosen file once more, and that it opens as the weight format it claims,
before compress copies it to its output.

Every field that checks out can still have been edited within its range (a views KL that steers the choice,
a round's numbers in the report): the search seals the record (`edge.core.json_text.sealed_text`: the SHA-256 of
its canonical JSON), and a record whose seal does not match, or that has none, is refused after the field checks,
which name what is malformed first.
"""

from __future__ import annotations

import hashlib
import json
import string
from pathlib import Path

from edge.codec.checksum import check_seal
from edge.codec.metadata import MetadataError
from edge.core.config import ConfigError
from edge.core.files import file_sha256
from edge.core.json_text import SEAL, is_number, loads, seal_problem
from edge.core.weight_formats import parse_format

MAX_STATE_BYTES = 16 << 20  # a search records a few hundred points at most: well under 1 MB
MAX_DEPTH = 6  # a record nests 5 deep (sensitivity -> format -> rows -> row -> field)
MAX_ITEMS = 10_000  # entries in any one list of the record
STAGES = ("quantization", "mixed", "slimming", "qat")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_name(value) -> bool:  # no folder part, no '..', no hidden or empty name
    return isinstance(value, str) and value == Path(value).name and not value.startswith(".") and value != ""


def _format(value) -> bool:
    try:
        return isinstance(value, str) and bool(parse_format(value.split()[0]))
    except (ValueError, IndexError):
        return False


def _list_of(test, low: int = 0):
    return lambda value: isinstance(value, list) and low <= len(value) <= MAX_ITEMS and all(map(test, value))


# kind -> (test, what the refusal says it expects)
KINDS = {
    "file": (_plain_name, "a file name in the work folder"),
    "onnx": (lambda v: _plain_name(v) and v.endswith(".onnx"), "an .onnx file name in the work folder"),
    "text": (lambda v: isinstance(v, str), "text"),
    "seconds": (lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
    "kl": (lambda v: is_number(v) and v >= 0, "a finite number >= 0"),
    "fraction": (lambda v: is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
    "score": (lambda v: is_number(v) and -1 <= v <= 1, "a fraction in [0, 1] (or -1: none measured)"),
    "keep": (lambda v: is_number(v) and 0 < v <= 1, "a keep fraction in (0, 1]"),
    "count": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "ordinal": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "bits": (lambda v: _whole(v) and 1 <= v <= 16, "a bit width in 1..16"),
    "widths": (_list_of(lambda w: _whole(w) and w >= 1, low=1), "a list of channel widths >= 1"),
    "seconds list": (_list_of(lambda s: is_number(s) and s >= 0), "a list of finite numbers >= 0"),
    "stage": (lambda v: v in STAGES, f"one of {', '.join(STAGES)}"),
    "skipped": (_list_of(lambda e: isinstance(e, dict) and set(e) == {"stage", "keep", "format", "least_bytes"}
                         and e["stage"] in STAGES and isinstance(e["format"], str) and is_number(e["keep"])
                         and 0 < e["keep"] <= 1 and _whole(e["least_bytes"]) and e["least_bytes"] >= 0),
                "a list of {stage, keep, format, least_bytes} (formats too large by their weight count)"),
    "texts": (_list_of(lambda v: isinstance(v, str)), "a list of text"),
    "format": (_format, "a weight format name (uint4 per-channel, fp16, ...)"),
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64 and set(v) <= set(string.hexdigits.lower()),
               "a SHA-256 in hex"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "object": (lambda v: isinstance(v, dict), "a JSON object"),
    "list": (lambda v: isinstance(v, list) and len(v) <= MAX_ITEMS, "a JSON list"),
    "chosen": (lambda v: v is None or isinstance(v, dict), "a point or null"),
    "keeps": (_list_of(lambda k: KINDS["keep"][0](k)), "a list of keep fractions in (0, 1]"),
    "fitting": (lambda v: isinstance(v, dict) and all(k is None or KINDS["keep"][0](k) for k in v.values()),
                "an object of format -> keep fraction in (0, 1] or null"),
    "sensitivity": (lambda v: isinstance(v, dict) and all(KINDS["list"][0](rows) for rows in v.values()),
                    "an object of format -> list of layer rows"),
}

# record part -> (required fields, optional fields), each field -> kind
RECORD = ({"settings": "object", "about": "object", "points": "list", "rounds": "list", "seconds": "seconds"},
          {"seconds_before": "seconds", "done": "flag", "stopped": "text", "command": "text", "chosen": "chosen",
           "path": "keeps", "fitting_keep": "fitting", "sensitivity": "sensitivity", "skipped": "skipped",
           "unprobed": "texts", "machine": "object", SEAL: "sha256"})
POINT = ({"stage": "stage", "keep": "keep", "format": "format", "onnx": "onnx", "bytes": "count",
          "parameters": "count", "widths": "widths", "val_agreement": "fraction", "sha256": "sha256"},
         {"val_kl": "kl", "val_accuracy": "fraction", "test_accuracy": "fraction", "test_agreement": "fraction",
          "round": "count", "views_kl": "kl", "views_kl_noise": "kl", "views_agreement": "fraction"})
ROUND = ({"round": "ordinal", "keep": "keep", "model": "file", "seconds": "seconds", "epoch_seconds": "seconds list",
          "widths": "widths", "val_before_finetune": "fraction", "val_after_finetune": "score", "best_epoch": "count"},
         {"export_seconds": "seconds", "done": "flag"})
SENSITIVITY_ROW = ({"name": "text", "weights": "count", "bits": "bits", "kl": "kl"}, {})
# optional fields written together (`edge.workflows.compress_views.Views.score`): the report reads them together
TOGETHER = ({"views_kl", "views_kl_noise", "views_agreement"},)


def read_state(path: Path) -> dict:
    """The record at ``path`` (``state.json`` in the search's work folder), checked with the candidate files
    it names (`ConfigError` naming the file and the field otherwise). Nothing is written."""
    saved = _parse(path)
    problem = _problem(saved) or _files_problem(saved, path.parent) or seal_problem(saved)
    if problem:
        raise ConfigError(f"{path}: not a resumable compress record ({problem}): run again without --resume")
    return saved


def chosen_bytes(work: Path, point: dict) -> bytes:
    """The chosen candidate's file as the search wrote it, checked again just before it is copied: its
    recorded hash and size, and it opens as an edge classifier stored as the weight format it claims."""
    from edge.inference.runtime import ModelError, OnnxClassifier

    path = work / point["onnx"]
    problem = _candidate_problem(path, point)
    data = b"" if problem else path.read_bytes()
    if not problem and hashlib.sha256(data).hexdigest() != point["sha256"]:
        problem = "changed since it was measured"
    if not problem:
        try:
            stored = OnnxClassifier(path).quant
        except (ModelError, OSError) as err:
            problem = f"not an edge ONNX file ({err})"
        else:
            claimed = point["format"].split()
            if stored.get("weights") != claimed[0] or bool(stored.get("per_channel")) != ("per-channel" in claimed):
                problem = f"holds {stored.get('weights')} weights, not the {point['format']} it was recorded as"
    if problem:
        raise ConfigError(f"{work / 'state.json'}: the chosen candidate {path.name} (chosen.onnx) is {problem}: "
                          f"run again without --resume; nothing written")
    return data


def _parse(path: Path):
    if not path.is_file():
        raise ConfigError(f"{path}: nothing to resume (no such file, or not a regular file): run without "
                          f"--resume first")
    if path.stat().st_size > MAX_STATE_BYTES:
        raise ConfigError(f"{path}: refused: over {MAX_STATE_BYTES:,} bytes, not a compress record")
    try:
        saved = loads(path.read_bytes(), MAX_DEPTH, parse_constant=_no_constant)
    except ValueError as err:  # UnicodeDecodeError too
        raise ConfigError(f"{path}: not a resumable compress record ({err})") from None
    return saved


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number a record holds")


def _problem(saved) -> str | None:
    if not isinstance(saved, dict):
        return f"a JSON {type(saved).__name__}, not an object"
    problem = _fields_problem(saved, RECORD, "")
    if problem:
        return problem
    parts = [(entry, POINT, f"points[{i}].") for i, entry in enumerate(saved["points"])]
    parts += [(entry, ROUND, f"rounds[{i}].") for i, entry in enumerate(saved["rounds"])]
    parts += [(row, SENSITIVITY_ROW, f"sensitivity[{label!r}][{i}].")
              for label, rows in saved.get("sensitivity", {}).items() for i, row in enumerate(rows)]
    return next(filter(None, (_fields_problem(*part) for part in parts)), None)


def _fields_problem(entry, part: tuple[dict, dict], prefix: str) -> str | None:
    required, optional = part
    if not isinstance(entry, dict):
        return f"{prefix.rstrip('.') or 'the record'} is {_shown(entry)}: expected a JSON object"
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        return f"{prefix}{unknown[0]}: not a field edge writes"
    for field, kind in {**required, **{k: v for k, v in optional.items() if k in entry}}.items():
        test, expected = KINDS[kind]
        if field not in entry:
            return f"{prefix}{field} is missing"
        if not test(entry[field]):
            return f"{prefix}{field} is {_shown(entry[field])}: expected {expected}"
    for group in TOGETHER:
        given = group & set(entry)
        if given and given != group:
            return f"{prefix}{sorted(group - given)[0]} is missing (recorded with {', '.join(sorted(given))})"
    return None


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _files_problem(saved: dict, work: Path) -> str | None:
    """Every candidate a point names: the file the search wrote (its recorded hash); every done round's model
    file: a regular file."""
    for i, point in enumerate(saved["points"]):
        path = work / point["onnx"]
        problem = _candidate_problem(path, point) or (file_sha256(path) != point["sha256"]
                                                      and "changed since it was measured (its SHA-256 differs)")
        if not problem:
            try:
                problem = not check_seal(path) and "not an ONNX file edge wrote (no edge.crc32 checksum)"
            except MetadataError as err:
                problem = str(err).split(": ", 1)[-1]
        if problem:
            return f"points[{i}].onnx: {point['onnx']} is {problem}"
    for i, entry in enumerate(saved["rounds"]):
        path = work / entry["model"]
        if entry.get("done") and (path.is_symlink() or not path.is_file()):
            return f"rounds[{i}].model: {entry['model']} is missing, or not a regular file"
    return None


def _candidate_problem(path: Path, point: dict) -> str | None:
    if path.is_symlink() or not path.is_file():
        return "missing, or not a regular file"
    status = path.stat()
    if status.st_nlink != 1:
        return "a hard link (the search writes files of its own)"
    if status.st_size != point["bytes"]:
        return f"{status.st_size:,} B, not the {point['bytes']:,} B recorded"
    return None
