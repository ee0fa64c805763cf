"""The threads a process runs: the cores it may use (affinity, cgroup quota), ``--threads`` and
``CORDFUSE_THREADS`` over them, shared between worker processes, applied by every verb."""

from __future__ import annotations

import os

import pytest
import torch

from cordfuse.cli import main
from cordfuse.errors import CordfuseError
from cordfuse.threads import (
    OPENMP_WAIT_VARIABLES,
    THREADS_ENV,
    cgroup_cpu_limit,
    set_threads,
    short_spin_openmp,
    threads_budget,
    usable_cores,
)


@pytest.fixture
def restore_threads():
    """Tests change this process's thread pools; put them back."""
    before = torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", THREADS_ENV)}
    yield
    set_threads(before)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_cgroup_v2_quota_in_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_cgroup_v1_quota_in_cores(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert usable_cores(tmp_path) == 8  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == 2  # 1.5 cores still run two threads at a time
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cores(tmp_path) == 1  # a one-core Slurm job under a larger quota


def test_threads_budget_order_and_sharing(monkeypatch):
    monkeypatch.setattr("cordfuse.threads.usable_cores", lambda: 6)
    assert threads_budget(None, {}) == 6
    assert threads_budget(None, {}, processes=4) == 1  # 6 // 4: never more than the cores
    assert threads_budget(None, {}, processes=12) == 1
    assert threads_budget(None, {THREADS_ENV: "4"}, processes=2) == 2
    assert threads_budget(3, {THREADS_ENV: "4"}, processes=2) == 3  # --threads is per process


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_threads_variable_is_one_clear_error(value):
    with pytest.raises(CordfuseError, match=f"{THREADS_ENV}='{value}'"):
        threads_budget(None, {THREADS_ENV: value})
    with pytest.raises(CordfuseError, match="--threads must be at least 1"):
        threads_budget(0, {})


def test_openmp_threads_spin_briefly_unless_the_user_chose():
    environ: dict[str, str] = {}
    short_spin_openmp(environ)
    assert environ == {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
    for chosen in (
        {"OMP_WAIT_POLICY": "ACTIVE"},
        {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "5"},
    ):
        environ = dict(chosen)
        short_spin_openmp(environ)
        assert environ == chosen
    # one runtime's setting (an Intel setup script's) leaves the other runtime to cordfuse
    environ = {"KMP_BLOCKTIME": "50"}
    short_spin_openmp(environ)
    assert environ == {"KMP_BLOCKTIME": "50", "GOMP_SPINCOUNT": "1000"}


def test_set_threads_limits_torch_blas_and_child_processes(restore_threads):
    from threadpoolctl import threadpool_info

    set_threads(1)
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert all(pool["num_threads"] == 1 for pool in threadpool_info())


def test_every_verb_runs_within_its_threads_and_restores_them(tmp_path, monkeypatch):
    import cordfuse.cli.check

    seen = []

    def run(args):
        # the API calls a verb makes (a study's prepare_dataset, the demo's predict_dataset)
        # share its budget: --threads holds for them too
        seen.append((torch.get_num_threads(), threads_budget(), threads_budget(processes=2)))
        return 0

    monkeypatch.setattr(cordfuse.cli.check, "run", run)
    monkeypatch.setattr("cordfuse.threads.usable_cores", lambda: 8)
    for name in OPENMP_WAIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    assert main(["check", str(tmp_path)]) == 0
    monkeypatch.delenv(THREADS_ENV)
    assert main(["check", str(tmp_path), "--threads", "3"]) == 0
    assert seen == [(1, 1, 1), (3, 3, 1)]
    assert torch.get_num_threads() == before  # an in-process caller keeps its own
    assert os.environ.get("OMP_NUM_THREADS") != "3"
    assert THREADS_ENV not in os.environ
    assert not any(name in os.environ for name in OPENMP_WAIT_VARIABLES)


def test_bad_threads_are_a_one_line_error(tmp_path, monkeypatch, capsys):
    assert main(["check", str(tmp_path), "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cordfuse: error: --threads must be at least 1, got 0"
    monkeypatch.setenv(THREADS_ENV, "lots")
    assert main(["check", str(tmp_path)]) == 2
    assert f"{THREADS_ENV}='lots'" in capsys.readouterr().err
