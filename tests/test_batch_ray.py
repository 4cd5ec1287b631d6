"""`render_many` on Ray: the local tests' job list and checks (batch_jobs.py) on one local Ray
instance (`ray_session`, 2 CPUs), an actor killed mid-job, and a two-node cluster simulated on
this machine (last: it shuts the single-node instance down first)."""
from __future__ import annotations

import threading
import time

import pytest

from batch_jobs import (FRAMES, JOBS, check_batch, check_resumed, decoded, frame_count, leftovers,
                        mtimes, output_of, write_inputs, write_job_list)
from fastgen.atomic import leftover_temporaries
from fastgen.batch import render_many
from fastgen.batch.ray_backend import ACTOR_PREFIX, RenderWorker



def test_on_ray_outputs_equal_single_process_renders_a_bad_job_fails_alone_and_a_rerun_skips(
        ray_local, tmp_path, dataset, demo_env, batch_refs):
    jobs = write_job_list(tmp_path, dataset)
    results = render_many(jobs, ray_address="auto", workers=2, cpus_per_worker=1)
    check_batch(tmp_path, results, batch_refs)
    done = [r for r in results if r.status == "done"]
    assert all(r.worker.startswith(ACTOR_PREFIX) for r in done)
    assert {r.worker.rsplit("-", 1)[1] for r in done} == {"0", "1"}      # both actors worked
    # threads follow the CPUs Ray assigned (1 each), not OMP_NUM_THREADS or the machine's cores
    assert all(r.engine.endswith("1 session(s) x 1 thread(s)") for r in done), [r.engine for r in done]
    before = mtimes(tmp_path)
    again = render_many(jobs, ray_address="auto", workers=2, cpus_per_worker=1)
    check_resumed(tmp_path, results, again)
    assert mtimes(tmp_path) == before


def test_an_actor_sizes_its_threads_from_the_cpus_ray_assigned(ray_local):
    for cpus in (1, 2):
        worker = RenderWorker.options(num_cpus=cpus).remote(f"probe-{cpus}")
        try:
            assert ray_local.get(worker.cores.remote(), timeout=120) == cpus
        finally:
            ray_local.kill(worker)


def test_a_job_whose_actor_is_killed_mid_job_is_retried_elsewhere_with_one_complete_output(
        ray_local, tmp_path, demo_env, demo_cache):
    write_inputs(tmp_path)
    import soundfile as sf

    from fastgen import Generator, demo

    sf.write(tmp_path / "long.wav", demo.audio(2.0, seed=5), 16000)
    frames = 25
    jobs = [{"avatar": "demo", "audio": str(tmp_path / "long.wav"), "output": str(tmp_path / "out/long.mp4"),
             "frames": frames}]
    output = tmp_path / "out" / "long.mp4"
    box: dict = {}
    runner = threading.Thread(target=lambda: box.setdefault(
        "results", render_many(jobs, ray_address="auto", workers=2, cpus_per_worker=1, retries=1)))
    runner.start()
    # the job has started writing once its temporary exists: kill the actor that runs it
    deadline = time.monotonic() + 120
    while not leftover_temporaries(output) and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftover_temporaries(output) and not output.exists(), "the job never started"
    names = [a["name"] for a in ray_local.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(ACTOR_PREFIX)]
    victim = next(n for n in names if n.endswith("-0"))       # the first job goes to the first actor
    namespace = next(a["namespace"] for a in ray_local.util.list_named_actors(all_namespaces=True)
                     if a["name"] == victim)
    ray_local.kill(ray_local.get_actor(victim, namespace=namespace))
    runner.join(timeout=180)
    assert not runner.is_alive()
    (result,) = box["results"]
    assert result.status == "done" and result.attempts == 2, result
    assert result.worker != victim
    assert sorted(p.name for p in output.parent.iterdir()) == ["long.mp4"]      # one file, no temporary
    assert frame_count(output) == frames
    reference = tmp_path / "ref.mp4"
    Generator(demo.avatar(cache_dir=demo_cache)).render(tmp_path / "long.wav", reference, count=frames)
    assert output.read_bytes() == reference.read_bytes() or (decoded(output) == decoded(reference)).all()


def test_a_job_is_failed_after_its_workers_died_retries_plus_one_times(ray_local, tmp_path, dataset, demo_env):
    """With --retries 0 a killed worker fails its job (with the reason) and the others still run."""
    jobs = write_job_list(tmp_path, dataset, names=("demo_a", "demo_b"))
    # the first job long enough (25 frames, ~2 s on one CPU) for the kill to land inside it
    lines = jobs.read_text().splitlines()
    lines[0] = lines[0].replace(f'"frames": {FRAMES}', '"frames": 25')
    assert '"frames": 25' in lines[0]
    jobs.write_text("\n".join(lines) + "\n")
    kill_first = threading.Event()

    def killer():
        output = output_of(tmp_path, "demo_a")
        while not kill_first.is_set():
            if leftover_temporaries(output):
                for a in ray_local.util.list_named_actors(all_namespaces=True):
                    if a["name"].startswith(ACTOR_PREFIX) and a["name"].endswith("-0"):
                        ray_local.kill(ray_local.get_actor(a["name"], namespace=a["namespace"]))
                        kill_first.set()
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    results = render_many(jobs, ray_address="auto", workers=1, cpus_per_worker=1, retries=0)
    kill_first.set()
    first, second = results
    if first.status == "done":                 # it finished before the kill landed: not this test's case
        pytest.fail("the actor was not killed mid-job (the job ended first)")
    assert first.status == "failed" and "worker died 1 time" in first.error and first.attempts == 1
    assert second.status == "done" and second.frames == FRAMES      # on a replacement actor
    assert not output_of(tmp_path, "demo_a").exists() and leftovers(tmp_path) == []


def test_on_a_two_node_cluster_jobs_run_on_both_nodes_with_the_same_results(
        ray_session, tmp_path, dataset, demo_env, batch_refs):
    from ray.cluster_utils import Cluster

    ray_session.shutdown()            # one Ray per driver: the single-node instance goes first
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        ray_session.init(address=cluster.address, log_to_driver=False)
        nodes = {n["NodeID"] for n in ray_session.nodes() if n["Alive"]}
        assert len(nodes) == 2
        jobs = write_job_list(tmp_path, dataset)
        results = render_many(jobs, ray_address="auto", workers=2, cpus_per_worker=1)
        check_batch(tmp_path, results, batch_refs)
        assert {r.node for r in results if r.status == "done"} == nodes
    finally:
        ray_session.shutdown()
        cluster.shutdown()
    assert len(JOBS) == len(results)
