"""Shared fixtures (plain reference code is in ``references.py``, avatar builders in
``avatar_builders.py``).  Importing fastgen here fails the whole run loudly if the Cython extensions
were not built (there is no pure-Python fallback)."""
from __future__ import annotations

import importlib.machinery
from pathlib import Path

import numpy as np
import onnx
import pytest
import simplejpeg

import fastgen._ext.image
import fastgen._ext.mel
from avatar_builders import ENGINE_TEMPLATES, draw_template, write_landmarks
from fastgen.models import build_audio_encoder, build_generator, synthetic_weights

for _mod in (fastgen._ext.mel, fastgen._ext.image):
    if not _mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise RuntimeError(f"{_mod.__name__} is not a compiled extension: {_mod.__file__}")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A SyncTalk_2D dataset directory with synthetic input-sensitive ONNX models."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "full_body_img").mkdir()
    (root / "landmarks").mkdir()
    for k in range(ENGINE_TEMPLATES):
        img, (x0, y0, w) = draw_template(k)
        (root / "full_body_img" / f"{k}.jpg").write_bytes(
            simplejpeg.encode_jpeg(img, quality=95, colorspace="BGR"))
        write_landmarks(root / "landmarks" / f"{k}.lms", x0, y0, w)
    onnx.save(build_generator(synthetic_weights("generator"), "ave"), str(root / "generator.onnx"))
    onnx.save(build_audio_encoder(synthetic_weights("audio_encoder")), str(root / "audio_encoder.onnx"))
    return root


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A ``FASTGEN_CACHE`` with the demo avatar built once for the whole run."""
    from fastgen import demo

    root = tmp_path_factory.mktemp("demo-cache")
    demo.avatar(cache_dir=root)
    return root


@pytest.fixture(scope="session")
def generator_info(dataset):
    """The synthetic generator of ``dataset``, inspected (the backends' tests open it)."""
    from fastgen.models import inspect

    return inspect(dataset / "generator.onnx", expect="generator")


@pytest.fixture(scope="session")
def feeds():
    """A batch of 2 generator inputs with audio features (synthetic, seeded)."""
    from fastgen.models import generator_inputs

    image, audio = generator_inputs(np.random.default_rng(3), 2, "ave")
    return {"input": image, "audio": audio}


# --------------------------------------------------------------------------- batches (test_batch*.py)

@pytest.fixture(scope="session")
def batch_refs(tmp_path_factory, dataset, demo_cache) -> dict:
    """The batch tests' jobs rendered one by one with ``Generator.render`` in this process."""
    from batch_jobs import render_references

    return render_references(tmp_path_factory.mktemp("batch-refs"), dataset, demo_cache)


@pytest.fixture
def demo_env(monkeypatch, demo_cache) -> Path:
    """``FASTGEN_CACHE`` pointing at the session's demo cache (batch workers open ``demo`` there)."""
    monkeypatch.setenv("FASTGEN_CACHE", str(demo_cache))
    return demo_cache


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole run: 2 CPUs, as on this project's machines."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's Ray instance, started again if a test shut it down (the cluster test does)."""
    if not ray_session.is_initialized():
        ray_session.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray_session
