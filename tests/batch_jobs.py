"""A small job list for the batch tests (local and Ray), its single-process reference renders,
and the checks both modes must pass."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

FRAMES = 5
# name -> job entry (paths relative to the job list's folder); "bad" has unreadable audio
JOBS = {
    "demo_a": {"avatar": "demo", "audio": "a.wav", "output": "out/demo_a/", "frames": FRAMES},
    "demo_b": {"avatar": "demo", "audio": "b.wav", "output": "out/demo_b/", "frames": FRAMES,
               "jpeg_quality": 80},
    "demo_mp4": {"avatar": "demo", "audio": "a.wav", "output": "out/demo.mp4", "frames": FRAMES},
    "dataset": {"avatar": "DATASET", "audio": "b.wav", "output": "out/dataset/", "frames": FRAMES,
                "blend": "hard"},
    "bad": {"avatar": "demo", "audio": "bad.wav", "output": "out/bad/", "frames": FRAMES},
}
GOOD = [name for name in JOBS if name != "bad"]


def write_inputs(root: Path) -> None:
    """The audio clips of every job list (speech-like, 1 s) and a file that is not audio."""
    from fastgen import demo

    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "a.wav", demo.audio(1.0, seed=11), 16000)
    sf.write(root / "b.wav", demo.audio(1.0, seed=12), 16000)
    (root / "bad.wav").write_bytes(b"RIFF but not really a wave file")


def write_job_list(root: Path, dataset: Path, names=tuple(JOBS)) -> Path:
    """``root/jobs.jsonl`` with the named jobs (inputs written beside it)."""
    write_inputs(root)
    lines = []
    for name in names:
        entry = dict(JOBS[name])
        if entry["avatar"] == "DATASET":
            entry["avatar"] = str(dataset)
        lines.append(json.dumps(entry))
    path = root / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def render_references(root: Path, dataset: Path, demo_cache: Path) -> dict:
    """name -> the output ``Generator.render`` writes for that job in this process."""
    import fastgen
    from fastgen import Avatar, Generator

    write_inputs(root)
    (root / "ref").mkdir()
    generators = {}
    refs = {}
    for name in GOOD:
        job = JOBS[name]
        key = (job["avatar"], job.get("blend", "feather"))
        if key not in generators:
            avatar = fastgen.demo.avatar(cache_dir=demo_cache) if job["avatar"] == "demo" \
                else Avatar.open(dataset)
            generators[key] = Generator(avatar, blend=job.get("blend", "feather"))
        out = root / "ref" / Path(job["output"]).name
        generators[key].render(root / job["audio"], out, count=job["frames"],
                               jpeg_quality=job.get("jpeg_quality", 95))
        refs[name] = out
    return refs


def output_of(root: Path, name: str) -> Path:
    return root / JOBS[name]["output"]


def same_output(a: Path, b: Path) -> bool:
    """Byte-identical outputs: the same file, or the same frame files in two JPEG directories."""
    if a.is_file() or b.is_file():
        return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and bool(names) and \
        all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def leftovers(root: Path) -> list:
    """Temporaries anywhere under ``root`` (what a half-finished write leaves)."""
    return sorted(str(p) for p in root.rglob(".*.tmp-*"))


def check_batch(root: Path, results: list, refs: dict, names=tuple(JOBS)) -> None:
    """Every good job done and equal to its reference; the bad one failed alone with its reason."""
    by_name = dict(zip(names, results))
    assert len(results) == len(names)
    for name, result in by_name.items():
        if name == "bad":
            assert result.status == "failed" and not result.ok
            assert "bad.wav" in result.error and "\n" not in result.error
            assert not output_of(root, name).exists()
        else:
            assert result.status == "done", (name, result.error)
            assert result.frames == FRAMES
            assert same_output(output_of(root, name), refs[name]), name
    assert leftovers(root) == []


def check_resumed(root: Path, first: list, again: list) -> None:
    """A rerun skips every finished job, leaves its output untouched, and fails the bad one again."""
    for before, after in zip(first, again):
        if before.status == "done":
            assert after.status == "skipped" and after.ok and after.frames == 0
        else:
            assert after.status == "failed"
    assert leftovers(root) == []


def mtimes(root: Path) -> dict:
    return {str(p): os.stat(p).st_mtime_ns for p in (root / "out").rglob("*")}


def fresh_copy(src: Path, dest: Path) -> Path:
    """A copy of a job list folder without its outputs (for a second run from scratch)."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("out", "ref"))
    return dest / "jobs.jsonl"


def frame_count(video: Path) -> int:
    import av

    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def decoded(video: Path) -> np.ndarray:
    import av

    with av.open(str(video)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])
