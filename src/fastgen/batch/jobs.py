"""Job lists: one render per line, as JSON Lines or CSV, checked whole before anything runs.

A line names ``avatar`` (a pack, a SyncTalk_2D dataset or package, or ``demo``), ``audio`` and
``output`` (a video or a JPEG directory, as for ``fastgen run -o``), plus options: ``blend``,
``frames``, ``jpeg_quality``, ``backend`` and ``precision``.  Relative paths are taken from the job
list's own folder, so a list and its files can move together.  Malformed lines, unknown options,
bad values and two jobs writing one output are all reported at once, each with its line number.
Whether the files exist is not checked here: a job whose avatar or audio is missing fails alone
when it runs.

This module imports nothing heavy (no numpy, no ONNX Runtime), so the CLI checks a list at once.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Optional, Union

from ..errors import InputError
from ..runtime.choice import CHOICES, PRECISION_CHOICES
from ..sinks import output_kind

DEMO = "demo"
REQUIRED = ("avatar", "audio", "output")
BLENDS = ("feather", "hard")
# problems listed in the one-line error before "and N more"
SHOWN_PROBLEMS = 8


@dataclass(frozen=True)
class Job:
    """One render: ``avatar`` speaking ``audio`` into ``output``.

    ``frames`` renders only the first N frames (None: all); ``backend`` / ``precision`` are those
    of :class:`fastgen.Generator` (its defaults: ONNX Runtime fp32).  ``line`` is where the job was
    read (0 for jobs built in code), for messages and the report.
    """

    avatar: str
    audio: str
    output: str
    blend: str = "feather"
    frames: Optional[int] = None
    jpeg_quality: int = 95
    backend: str = "ort"
    precision: str = "fp32"
    line: int = 0

    @property
    def engine_key(self) -> tuple:
        """Jobs with equal keys share one loaded Generator (a worker's cache entry)."""
        return (self.avatar, self.blend, self.backend, self.precision)

    def as_dict(self) -> dict:
        return asdict(self)


OPTIONS = tuple(f.name for f in fields(Job) if f.name not in (*REQUIRED, "line"))


class JobListError(InputError):
    """A job list that cannot run: every problem, each with its line number (``problems``)."""

    def __init__(self, where: str, problems: list):
        self.problems = list(problems)
        shown = " | ".join(self.problems[:SHOWN_PROBLEMS])
        more = len(self.problems) - SHOWN_PROBLEMS
        super().__init__(f"{where}: {len(self.problems)} bad job line(s), nothing was run: {shown}"
                         + (f" | and {more} more" if more > 0 else ""))


def _integer(value, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or \
            (isinstance(value, str) and not value.strip().lstrip("+").isdigit()):
        raise ValueError(f"{name} must be a whole number (got {value!r})")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound} (got {number})")
    return number


def _choice(value, name: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


def _path(value, name: str, base: Optional[Path]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty path (got {value!r})")
    if base is None or os.path.isabs(value) or (name == "avatar" and value == DEMO):
        return value
    # absolute, since Ray workers do not share the driver's working directory; a trailing "/"
    # is kept: it is what makes an output name a JPEG directory
    return os.path.join(os.path.abspath(base), value)


def _output(path: str) -> str:
    try:
        output_kind(path)
    except InputError:
        raise ValueError(f"output {path}: unknown type {Path(path).suffix!r} (a .mp4, .mov or .mkv "
                         "video, or a directory: a name ending in / or without an extension)") from None
    return path


def make_job(entry: dict, *, line: int = 0, base: Optional[Path] = None) -> Job:
    """A :class:`Job` from one parsed line (a dict); ``ValueError`` says what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError(f"a job is an object with {', '.join(REQUIRED)} (got {type(entry).__name__})")
    problems = []
    unknown = sorted(set(entry) - set(REQUIRED) - set(OPTIONS))
    if unknown:
        problems.append(f"unknown option(s) {', '.join(map(repr, unknown))} (known: "
                        f"{', '.join(REQUIRED + OPTIONS)})")
    missing = [k for k in REQUIRED if entry.get(k) in (None, "")]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    given = {k: v for k, v in entry.items() if v not in (None, "") and k not in unknown}
    checks = {"avatar": lambda v: _path(v, "avatar", base), "audio": lambda v: _path(v, "audio", base),
              "output": lambda v: _output(_path(v, "output", base)),
              "blend": lambda v: _choice(v, "blend", BLENDS),
              "frames": lambda v: _integer(v, "frames", 1),
              "jpeg_quality": lambda v: _integer(v, "jpeg_quality", 1, 100),
              "backend": lambda v: _choice(v, "backend", CHOICES),
              "precision": lambda v: _choice(v, "precision", PRECISION_CHOICES)}
    values = {}
    for name, value in given.items():
        try:
            values[name] = checks[name](value)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return Job(**values, line=line)


def _json_lines(text: str):
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            yield number, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")


def _csv_rows(text: str):
    reader = csv.reader(io.StringIO(text))
    header = None
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            missing = [k for k in REQUIRED if k not in header]
            if missing:
                yield number, ValueError(f"the CSV header must name {', '.join(REQUIRED)} "
                                         f"(missing {', '.join(missing)})")
                return
            continue
        if len(row) != len(header):
            yield number, ValueError(f"{len(row)} fields, the header has {len(header)}")
            continue
        yield number, {k: cell.strip() for k, cell in zip(header, row)}


def list_format(path: Path, text: str) -> str:
    """"jsonl" or "csv": by the extension, else by the first character that is not blank."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def parse_jobs(text: str, *, fmt: str = "jsonl", where: str = "jobs",
               base: Optional[Path] = None) -> list:
    """Every :class:`Job` of a job list's text, or one :class:`JobListError` with every problem."""
    rows = _json_lines(text) if fmt == "jsonl" else _csv_rows(text)
    jobs, problems, writers = [], [], {}
    for number, entry in rows:
        try:
            if isinstance(entry, Exception):
                raise entry
            job = make_job(entry, line=number, base=base)
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        target = os.path.normpath(os.path.abspath(job.output))
        if target in writers:
            problems.append(f"line {number}: output {job.output} is also written by line {writers[target]}")
            continue
        writers[target] = number
        jobs.append(job)
    if problems:
        raise JobListError(where, problems)
    if not jobs:
        raise InputError(f"{where}: no jobs (one JSON object or CSV row per line, with "
                         f"{', '.join(REQUIRED)})")
    return jobs


def read_jobs(path: Union[str, "os.PathLike[str]"]) -> list:
    """The jobs of a ``.jsonl`` / ``.csv`` file, paths taken relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such job list") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a job list") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"{path}: cannot read the job list ({reason})") from None
    return parse_jobs(text, fmt=list_format(path, text), where=str(path), base=path.parent)


def as_jobs(jobs) -> list:
    """Jobs from a job list path, or from :class:`Job` objects and dicts (checked like lines;
    their relative paths are taken from the working directory)."""
    if isinstance(jobs, (str, os.PathLike)):
        return read_jobs(jobs)
    out, problems = [], []
    for number, job in enumerate(jobs, 1):
        if isinstance(job, Job):
            out.append(job)
            continue
        try:
            out.append(make_job(job, line=number, base=Path.cwd()))
        except ValueError as exc:
            problems.append(f"job {number}: {exc}")
    if problems:
        raise JobListError("jobs", problems)
    targets = [os.path.normpath(os.path.abspath(j.output)) for j in out]
    if len(set(targets)) != len(targets):
        raise InputError("jobs: two jobs write the same output")
    return out
