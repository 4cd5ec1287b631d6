"""`fastgen render-many` and `fastgen.batch` in local mode (no Ray needed; the last test runs this
file again where `import ray` fails).  The Ray side is in test_batch_ray.py, on the same job list
and checks (batch_jobs.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from batch_jobs import (GOOD, JOBS, check_batch, check_resumed, mtimes, output_of,
                        write_inputs, write_job_list)
from fastgen.atomic import building_dir, discard_leftovers, leftover_temporaries
from fastgen.batch import Job, JobListError, read_jobs, render_many
from fastgen.batch.dispatch import AvatarQueue
from fastgen.batch.local import cores_per_worker
from fastgen.engine import choose_config
from fastgen.runtime import default_threads
from fastgen.cli import main
from fastgen.errors import InputError

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- job lists

def test_a_job_list_reads_as_jsonl_or_csv_with_paths_from_its_folder(tmp_path):
    (tmp_path / "j.jsonl").write_text(
        '# comment\n\n{"avatar": "demo", "audio": "a.wav", "output": "o/x/", "frames": 5, "blend": "hard"}\n'
        '{"avatar": "/abs/pack", "audio": "/abs/b.wav", "output": "y.mp4", "jpeg_quality": "80"}\n')
    (tmp_path / "j.csv").write_text("avatar,audio,output,frames,backend,precision\n"
                                    "demo,a.wav,o/x/,5,ort,fp32\n/abs/pack,/abs/b.wav,y.mp4,,,\n")
    jsonl, csv = read_jobs(tmp_path / "j.jsonl"), read_jobs(tmp_path / "j.csv")
    assert [j.line for j in jsonl] == [3, 4] and [j.line for j in csv] == [2, 3]
    first = jsonl[0]
    assert first == Job("demo", str(tmp_path / "a.wav"), f"{tmp_path}/o/x/", blend="hard", frames=5, line=3)
    assert first.output.endswith("/")           # still a JPEG directory
    assert jsonl[1] == Job("/abs/pack", "/abs/b.wav", str(tmp_path / "y.mp4"), jpeg_quality=80, line=4)
    assert [(j.avatar, j.audio, j.output, j.frames) for j in csv] == \
        [(j.avatar, j.audio, j.output, j.frames) for j in jsonl]
    assert csv[1].jpeg_quality == 95 and csv[1].backend == "ort" and csv[1].precision == "fp32"


def test_every_bad_line_is_reported_with_its_number_before_anything_runs(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"avatar": "demo", "audio": "a.wav", "output": "ok/"}\n'
                    '{"avatar": "demo", "audio": "a.wav"}\n'
                    '{"avatar": "demo", "audio": "a.wav", "output": "x/", "speed": 2}\n'
                    'not json\n'
                    '{"avatar": "demo", "audio": "a.wav", "output": "y/", "frames": 0, "jpeg_quality": 101}\n'
                    '{"avatar": "demo", "audio": "a.wav", "output": "z.avi", "backend": "tpu"}\n'
                    '{"avatar": "demo", "audio": "b.wav", "output": "ok"}\n')
    with pytest.raises(JobListError) as info:
        read_jobs(path)
    problems = info.value.problems
    assert [p.split(":")[0] for p in problems] == [f"line {n}" for n in (2, 3, 4, 5, 6, 7)]
    text = " ".join(problems)
    for expected in ("missing output", "'speed'", "not valid JSON", "frames must be >= 1",
                     "jpeg_quality must be 1..100", "'.avi'", "backend must be one of",
                     "also written by line 1"):
        assert expected in text
    assert "\n" not in str(info.value)

    (tmp_path / "jobs.csv").write_text("avatar,audio\ndemo,a.wav\n")
    with pytest.raises(JobListError, match="line 1: the CSV header must name"):
        read_jobs(tmp_path / "jobs.csv")
    with pytest.raises(InputError, match="no such job list"):
        read_jobs(tmp_path / "missing.jsonl")


def test_jobs_are_grouped_by_avatar_so_workers_keep_what_they_loaded():
    jobs = [Job("A", f"{i}.wav", f"a{i}/") for i in range(4)]
    jobs.insert(1, Job("B", "x.wav", "bx/"))
    jobs.append(Job("B", "y.wav", "by/"))
    queue = AvatarQueue(jobs)
    first = queue.take()                                  # the largest group: A
    second = queue.take(others=[first.job.engine_key])    # a group nobody holds: B
    assert (first.job.avatar, second.job.avatar) == ("A", "B")
    a_key, b_key = first.job.engine_key, second.job.engine_key
    assert [queue.take([a_key], [b_key]).job.audio for _ in range(2)] == ["1.wav", "2.wav"]
    assert queue.take([a_key, b_key], [a_key]).job.audio == "y.wav"   # its latest avatar first
    last = queue.take([b_key], [a_key])                   # B is empty: join A
    assert last.job.audio == "3.wav" and last.attempts == 1 and queue.take() is None
    queue.put_back(last)
    assert queue.take().attempts == 2


def test_leftover_temporaries_of_an_output_are_found_and_removed(tmp_path):
    dest = tmp_path / "frames"
    with pytest.raises(RuntimeError):
        with building_dir(dest, None, "frames") as tmp:
            (tmp / "frame_00001.jpg").write_bytes(b"x")
            raise RuntimeError("killed")          # a clean failure removes its temporary ...
    assert leftover_temporaries(dest) == []
    (tmp_path / ".frames.tmp-dead").mkdir()       # ... a killed process does not
    (tmp_path / ".frames.mp4.tmp-dead.mp4").write_bytes(b"x")
    (tmp_path / ".framesX.tmp-other").mkdir()
    assert [p.name for p in leftover_temporaries(dest)] == [".frames.tmp-dead"]
    assert discard_leftovers(dest) == 1 and leftover_temporaries(dest) == []
    assert (tmp_path / ".framesX.tmp-other").exists()


# --------------------------------------------------------------------------- local runs

@pytest.mark.parametrize("workers", [1, 2])
def test_local_batch_equals_single_process_renders_and_a_bad_job_fails_alone(
        workers, tmp_path, dataset, demo_env, batch_refs):
    jobs = write_job_list(tmp_path, dataset)
    seen = []
    results = render_many(jobs, workers=workers, report=tmp_path / "report.jsonl",
                          on_result=lambda r, tally: seen.append((r.status, tally.finished)))
    check_batch(tmp_path, results, batch_refs)
    assert sorted(n for _, n in seen) == list(range(1, len(JOBS) + 1))
    report = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in report) == list(range(1, len(JOBS) + 1))
    bad = next(r for r in report if r["status"] == "failed")
    assert bad["line"] == list(JOBS).index("bad") + 1 and "bad.wav" in bad["error"]
    assert {r["worker"] for r in report} <= {f"local-{i}" for i in range(workers)}
    done = [r for r in report if r["status"] == "done"]
    # each local worker's generator is sized from its share of the cores
    share = cores_per_worker(workers) or default_threads()
    expected = choose_config(share, dynamic_batch=False)
    assert all(r["engine"].endswith(f"{expected.sessions} session(s) x {expected.threads} thread(s)")
               and r["frames"] > 0 for r in done), [r["engine"] for r in done]


def test_a_local_rerun_skips_finished_jobs_and_redoes_interrupted_ones(tmp_path, dataset, demo_env, batch_refs):
    jobs = write_job_list(tmp_path, dataset)
    first = render_many(jobs)
    before = mtimes(tmp_path)
    again = render_many(jobs)
    check_resumed(tmp_path, first, again)
    assert mtimes(tmp_path) == before
    # an interrupted run: one output never renamed into place, its temporary left behind
    victim = output_of(tmp_path, "demo_b")
    victim.rename(victim.parent / f".{victim.name}.tmp-killed")
    third = render_many(jobs)
    statuses = {name: r.status for name, r in zip(JOBS, third)}
    assert statuses == {**{n: "skipped" for n in GOOD}, "demo_b": "done", "bad": "failed"}
    check_batch(tmp_path, [r if r.status != "skipped" else first[i] for i, r in enumerate(third)], batch_refs)


def test_the_command_exits_1_when_a_job_failed_and_0_when_all_are_complete(tmp_path, dataset, demo_env,
                                                                            capsys):
    jobs = write_job_list(tmp_path, dataset, names=("demo_a", "bad"))
    assert main(["render-many", str(jobs), "--quiet", "--report", str(tmp_path / "r.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "job 2" in err and "bad.wav" in err and "Traceback" not in err
    good = write_job_list(tmp_path, dataset, names=("demo_a",))
    assert main(["render-many", str(good)]) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out


def test_the_command_rejects_bad_lists_and_options_in_one_line_without_running(tmp_path, capsys):
    write_inputs(tmp_path)
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"avatar": "demo", "audio": "a.wav", "output": "o/", "fps": 30}\n{"avatar": 1}\n')
    assert main(["render-many", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastgen: error:")
    assert "line 1: unknown option(s) 'fps'" in err[0] and "line 2:" in err[0]
    assert not (tmp_path / "o").exists()
    for option in (["--workers", "0"], ["--retries", "-1"], ["--cpus-per-worker", "0"]):
        assert main(["render-many", str(path), *option]) == 2
        assert capsys.readouterr().err.startswith(f"fastgen: error: {option[0]} must be")


def test_a_missing_ray_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch, capsys):
    write_inputs(tmp_path)
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"avatar": "demo", "audio": "a.wav", "output": "o/"}\n')
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` fails
    assert main(["render-many", str(path), "--ray-address", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['fastgen: error: Ray is not installed; batches on Ray need it: pip install "fastgen[ray]"']
    with pytest.raises(InputError, match=r"fastgen\[ray\]"):
        render_many(path, ray_address="auto")
    assert not (tmp_path / "o").exists()


def test_fastgen_and_its_batch_module_do_not_import_ray():
    code = ("import sys, fastgen, fastgen.batch, fastgen.batch.command, fastgen.cli; "
            "fastgen.cli.build_parser(); fastgen.batch.read_jobs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'numpy', 'onnxruntime')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_local_mode_passes_where_ray_is_not_installed(tmp_path):
    """This file's tests again, in a Python where `import ray` fails."""
    runner = ("import sys; sys.modules['ray'] = None; import pytest; "
              f"sys.exit(pytest.main([{str(HERE / 'test_batch.py')!r}, '-q', '-p', 'no:cacheprovider', "
              "'-k', 'not where_ray_is_not_installed and not do_not_import_ray', "
              f"'--basetemp', {str(tmp_path / 'pytest')!r}]))")
    run = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, cwd=HERE.parent)
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 9, summary
