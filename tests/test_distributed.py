"""Data parallelism with torch.distributed gives the gradients and the training run of one
process; tensor-parallel linears equal the unsplit layer; failures and taken ports are clean.

Each `launch` starts two Python processes (a few seconds), so the file keeps them few."""

from __future__ import annotations

import multiprocessing
import multiprocessing.resource_tracker
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.budgets import unix_socket_kernels
from tutorlib.distributed import (
    ddp_worker,
    launch,
    pipeline_schedule,
    pipeline_worker,
    single_process_training,
    tensor_parallel_worker,
)
from tutorlib.models import TransformerConfig


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (Linux /proc), leaving out Python's resource tracker: one
    helper per interpreter that multiprocessing's spawn starts and that exits with it."""
    tracker = multiprocessing.resource_tracker._resource_tracker._pid
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return [c for c in found if c != tracker]


def tiny_config(**changes) -> TransformerConfig:
    sizes = dict(vocab_size=20, context_length=16, d_model=32, n_heads=2, n_layers=2, d_ff=64)
    return TransformerConfig(**sizes, norm_first=True, **changes)


def test_ddp_gradients_and_run_equal_one_process() -> None:
    config = tiny_config()
    g = torch.Generator().manual_seed(0)
    inputs = torch.randint(0, 20, (4, 8, 16), generator=g)
    targets = torch.randint(0, 20, (4, 8, 16), generator=g)
    ranks = launch(ddp_worker, 2, (config, inputs, targets))
    reference = single_process_training(config, inputs, targets)
    for result in ranks:
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=0, atol=1e-6)
        for name, value in reference["state"].items():
            torch.testing.assert_close(result["state"][name], value, rtol=0, atol=1e-6)
        assert result["loss"] == pytest.approx(reference["loss"], abs=1e-6)
    assert reference["loss"][-1] < reference["loss"][0]
    assert children(os.getpid()) == [] and multiprocessing.active_children() == []


def test_tensor_parallel_linear_equals_the_full_layer() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, generator=g, dtype=torch.float64)
    b = torch.randn(8, generator=g, dtype=torch.float64)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    full = F.linear(x, w, b)
    for result in launch(tensor_parallel_worker, 2, (x, w, b)):
        torch.testing.assert_close(result["column"], full, rtol=0, atol=1e-12)
        torch.testing.assert_close(result["row"], full, rtol=0, atol=1e-12)


def test_a_failing_worker_raises_and_leaves_no_process_or_port() -> None:
    x = torch.randn(2, 5, dtype=torch.float64)  # 5 input features do not split over 2 ranks
    w, b = torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="in_features=5 must divide"):
        launch(tensor_parallel_worker, 2, (x, w, b), port=29533)
    assert children(os.getpid()) == [] and multiprocessing.active_children() == []
    with socket.socket() as s:  # nothing listens on the port any more
        assert s.connect_ex(("127.0.0.1", 29533)) != 0
    # ... so a new run can use it at once (its closed connections may still be in TIME_WAIT).
    w, b = torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    x = torch.randn(2, 6, dtype=torch.float64)
    for result in launch(tensor_parallel_worker, 2, (x, w, b), port=29533):
        torch.testing.assert_close(result["row"], F.linear(x, w, b))


def test_a_taken_port_and_a_notebook_function_are_clear_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} .* already in use"):
            launch(tensor_parallel_worker, 2, (), port=port)

    def local(rank: int, world_size: int) -> None: ...

    with pytest.raises(ValueError, match="importable"):
        launch(local, 2)


def test_pipeline_schedule_bubble() -> None:
    grid = pipeline_schedule(n_stages=4, n_microbatches=8)
    slots = len(grid[0])
    idle = sum(cell == "" for row in grid for cell in row)
    assert idle / (4 * slots) == pytest.approx(3 / (8 + 3))
    for row in grid:  # every stage runs every micro-batch forward, then backward
        assert sorted(c for c in row if c) == sorted(
            [f"F{m}" for m in range(8)] + [f"B{m}" for m in range(8)]
        )
    assert grid[3][3] == "F0" and grid[3][11] == "B0" and grid[0][-1] == "B7"


def test_launch_from_a_notebook_kernel_cleans_up_after_a_failing_cell() -> None:
    """The way a page uses it: `launch` from a Jupyter kernel; a cell that fails inside a
    worker raises in the notebook, and the next cell finds no worker left."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    cells = [
        "import multiprocessing, multiprocessing.resource_tracker, os, pathlib, torch\n"
        "from tutorlib.distributed import launch, tensor_parallel_worker\n"
        "w, b = torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)\n"
        "ok = launch(tensor_parallel_worker, 2, (torch.randn(3, 6, dtype=torch.float64), w, b))\n"
        "print('ok', len(ok))",
        "launch(tensor_parallel_worker, 2, (torch.randn(3, 5, dtype=torch.float64), w[:, :5], b))",
        "tracker = multiprocessing.resource_tracker._resource_tracker._pid\n"
        "kids = [int(c) for t in pathlib.Path(f'/proc/{os.getpid()}/task').iterdir()\n"
        "        for c in (t / 'children').read_text().split()]\n"
        "print('children', [c for c in kids if c != tracker])",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    with unix_socket_kernels() as config:
        nbclient.NotebookClient(notebook, timeout=120, allow_errors=True, config=config).execute()
    first, failing, last = notebook.cells
    assert "ok 2" in first.outputs[0]["text"]
    error = failing.outputs[0]
    assert error["output_type"] == "error" and "in_features=5 must divide" in "".join(
        error["traceback"]
    )
    assert last.outputs[0]["text"].strip() == "children []"


def test_two_stage_pipeline_gradients_equal_one_process() -> None:
    config = tiny_config(tie_weights=False)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 20, (8, 16), generator=g)
    targets = torch.randint(0, 20, (8, 16), generator=g)
    first, second = launch(pipeline_worker, 2, (config, inputs, targets, 4))
    assert set(first).isdisjoint(second), "each parameter lives on one stage"
    reference = single_process_training(config, inputs[None], targets[None])["grads"]
    assert set(first) | set(second) == set(reference)
    for name, grad in {**first, **second}.items():
        torch.testing.assert_close(grad, reference[name], rtol=0, atol=1e-6)
