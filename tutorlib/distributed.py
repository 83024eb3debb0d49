"""Parallel training with `torch.distributed`: a launcher, data parallelism, tensor parallelism.

`launch(fn, world_size)` starts `world_size` processes on this machine, joins them into one
process group (the gloo backend, which runs on CPUs; on GPUs one would pick nccl), runs
`fn(rank, world_size, *args)` in each and returns what each returned. It always cleans up: if a
process raises, the others are stopped and the error is raised in the caller with the worker's
traceback; no process is left behind.

Workers are started with the "spawn" method (a fresh interpreter), so `fn` must be importable:
a function defined in a notebook cannot be sent to a spawned process. The worker functions the
book runs live here: `ddp_worker` and `tensor_parallel_worker`.

Book: Chapter 4, Scaling (parallelism).
"""

from __future__ import annotations

import datetime
import io
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

from tutorlib.attention import causal_mask
from tutorlib.models import DecoderOnly, TransformerConfig

__all__ = [
    "column_parallel_linear",
    "ddp_worker",
    "free_port",
    "launch",
    "pipeline_schedule",
    "pipeline_worker",
    "row_parallel_linear",
    "single_process_training",
    "tensor_parallel_worker",
]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _check_port_free(port: int) -> None:
    """Raise unless `port` can be listened on. SO_REUSEADDR, as the process group's own store
    sets it: a port whose last connections are still closing (TIME_WAIT, a minute after a
    previous run) is free; one that a program listens on is not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as error:
            raise RuntimeError(
                f"port {port} on {HOST} is already in use (another process group or program "
                f"holds it); pass port=None to pick a free one"
            ) from error


def _run(
    rank: int,
    world_size: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
    timeout_s: float,
) -> None:
    """Body of one spawned process: join the group, run fn, report, leave the group."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = HOST, str(port)
    torch.set_num_threads(1)  # one core per process
    try:
        dist.init_process_group(
            "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        value = fn(rank, world_size, *args)
        buffer = io.BytesIO()
        torch.save(value, buffer)  # bytes travel safely after this process has exited
        results.put((rank, "ok", buffer.getvalue()))
    except BaseException:  # report everything, including SystemExit, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(
    fn: Callable[..., Any],
    world_size: int = 2,
    args: tuple = (),
    port: int | None = None,
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run `fn(rank, world_size, *args)` in `world_size` processes joined by a gloo group.

    Returns the list of the processes' return values, by rank. If one raises, or the whole
    run takes longer than `timeout_s`, every process is stopped and a `RuntimeError` carries the
    first worker's traceback. A `port` that is taken is a clear `RuntimeError` before anything
    starts; `port=None` picks a free one.

    Book: Chapter 4, Scaling (parallelism).
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    if getattr(fn, "__module__", "__main__") == "__main__" or "<locals>" in fn.__qualname__:
        raise ValueError(
            f"fn must be importable by a spawned process (defined at the top of a module), got "
            f"{fn.__qualname__!r} from {fn.__module__!r}; use tutorlib.distributed's workers "
            f"or put the function in a .py file"
        )
    if port is None:
        port = free_port()
    else:
        _check_port_free(port)
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(
            target=_run,
            args=(rank, world_size, port, fn, args, results, timeout_s),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    outputs: dict[int, Any] = {}
    try:
        for process in processes:
            process.start()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout_s)
        while len(outputs) < world_size:
            left = (deadline - datetime.datetime.now()).total_seconds()
            try:
                rank, status, value = results.get(timeout=max(0.1, min(left, 1.0)))
            except queue.Empty:
                if left <= 0:
                    raise RuntimeError(f"workers did not finish within {timeout_s} s") from None
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a worker died with exit code {dead[0].exitcode} before reporting"
                    ) from None
                continue
            if status == "error":
                raise RuntimeError(f"worker of rank {rank} failed:\n{value}")
            outputs[rank] = torch.load(io.BytesIO(value), weights_only=False)  # our own workers
    finally:
        for process in processes:
            process.join(timeout=5)
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        results.close()
        results.join_thread()
    return [outputs[rank] for rank in range(world_size)]


# ---- data parallelism ---------------------------------------------------------------------


def _train(
    model: torch.nn.Module,
    inputs: Tensor,
    targets: Tensor,
    lr: float,
    average_loss: Callable[[Tensor], Tensor],
) -> dict[str, Any]:
    """SGD on the given batches; record losses and the first step's gradients."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses, first_grads = [], {}
    for step in range(inputs.shape[0]):
        logits = model(inputs[step])  # (b, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets[step].flatten())
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        optimizer.step()
        losses.append(average_loss(loss.detach()).item())
    return {"loss": losses, "grads": first_grads, "state": model.state_dict()}


def single_process_training(
    config: TransformerConfig,
    inputs: Tensor,
    targets: Tensor,
    lr: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Any]:
    """The reference for `ddp_worker`: the same model, batches and SGD in one process.

    Shapes:
        inputs, targets (steps, B, T) int64  ->  {"loss": [steps], "grads": {...}, "state": {...}}

    Book: Chapter 4, Scaling (parallelism).
    """
    torch.manual_seed(seed)
    model = DecoderOnly(config).to(dtype)
    return _train(model, inputs, targets, lr, average_loss=lambda loss: loss)


def ddp_worker(
    rank: int,
    world_size: int,
    config: TransformerConfig,
    inputs: Tensor,
    targets: Tensor,
    lr: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Any]:
    """Data-parallel training, one process per rank: run it with `launch(ddp_worker, 2, ...)`.

    Every rank builds the same model from the same seed (DDP also broadcasts rank 0's weights
    at the start), takes its own contiguous slice of each global batch, and computes gradients
    on it; `DistributedDataParallel` averages the gradients across ranks during `backward`, so
    every rank takes the same optimizer step as one process on the whole batch. The loss it
    reports is the average over ranks.

    Shapes:
        inputs, targets (steps, B, T) int64, B divisible by world_size
        ->  {"loss": [steps], "grads": {name: tensor}, "state": state_dict}

    Book: Chapter 4, Scaling (parallelism).
    """
    steps, B, _ = inputs.shape
    if B % world_size:
        raise ValueError(f"batch size {B} must divide by world_size {world_size}")
    b = B // world_size
    mine = slice(rank * b, (rank + 1) * b)  # this rank's rows of every batch
    torch.manual_seed(seed)
    model = torch.nn.parallel.DistributedDataParallel(DecoderOnly(config).to(dtype))

    def average_loss(loss: Tensor) -> Tensor:
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)
        return loss / world_size

    result = _train(model, inputs[:, mine], targets[:, mine], lr, average_loss)
    result["grads"] = {n.removeprefix("module."): g for n, g in result["grads"].items()}
    result["state"] = {n.removeprefix("module."): v for n, v in result["state"].items()}
    return result


# ---- tensor parallelism -------------------------------------------------------------------


def column_parallel_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, rank: int, world_size: int
) -> Tensor:
    """y = x W^T + b with W split by output rows: each rank computes its slice of the output
    features, and an all-gather joins them. Call inside a process group.

    Shapes:
        x (N, in); weight (out, in); bias (out,)  ->  (N, out) on every rank

    Book: Chapter 4, Scaling (parallelism).
    """
    rows = weight.shape[0] // world_size
    mine = slice(rank * rows, (rank + 1) * rows)
    local = F.linear(x, weight[mine], None if bias is None else bias[mine])  # (N, out/ws)
    pieces = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(pieces, local.contiguous())
    return torch.cat(pieces, dim=-1)  # (N, out)


def row_parallel_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, rank: int, world_size: int
) -> Tensor:
    """y = x W^T + b with W split by input columns: each rank multiplies its slice of the input
    features by its slice of W, and an all-reduce sums the partial products. Call inside a
    process group.

    Shapes:
        x (N, in); weight (out, in); bias (out,)  ->  (N, out) on every rank

    Book: Chapter 4, Scaling (parallelism).
    """
    cols = weight.shape[1] // world_size
    mine = slice(rank * cols, (rank + 1) * cols)
    partial = F.linear(x[:, mine], weight[:, mine])  # (N, out), a partial sum
    dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    return partial if bias is None else partial + bias  # the bias is added once


def tensor_parallel_worker(
    rank: int, world_size: int, x: Tensor, weight: Tensor, bias: Tensor
) -> dict[str, Tensor]:
    """Run both splits of one linear layer; run it with `launch(tensor_parallel_worker, 2, ...)`.

    Book: Chapter 4, Scaling (parallelism).
    """
    for name, size in (("out_features", weight.shape[0]), ("in_features", weight.shape[1])):
        if size % world_size:
            raise ValueError(f"{name}={size} must divide by world_size={world_size}")
    return {
        "column": column_parallel_linear(x, weight, bias, rank, world_size),
        "row": row_parallel_linear(x, weight, bias, rank, world_size),
    }


# ---- pipeline parallelism -----------------------------------------------------------------


def pipeline_schedule(n_stages: int, n_microbatches: int) -> list[list[str]]:
    """GPipe's schedule: every micro-batch's forward through all stages, then the backwards.

    Returns a grid, one row per stage and one column per time slot, of labels "F3" (forward
    of micro-batch 3), "B3" (its backward) or "" (the stage idles: the *bubble*). The bubble's
    share of the grid is (p - 1) / (m + p - 1) for p stages and m micro-batches.

    Book: Chapter 4, Scaling (parallelism).
    """
    if n_stages < 1 or n_microbatches < 1:
        raise ValueError("need n_stages >= 1 and n_microbatches >= 1")
    S, M = n_stages, n_microbatches
    slots = 2 * (M + S - 1)
    grid = [[""] * slots for _ in range(S)]
    for s in range(S):
        for m in range(M):
            grid[s][s + m] = f"F{m}"  # forward: stage s starts micro-batch m at slot s + m
            grid[s][(M + S - 1) + (S - 1 - s) + m] = f"B{m}"  # backward runs the stages back
    return grid


def _stage(model: DecoderOnly, rank: int, split: int) -> Callable[[Tensor], Tensor]:
    """Stage 0: embeddings and layers [0, split); stage 1: layers [split, L), norm, output."""
    layers = model.decoder.layers

    def run(layer_range: range, x: Tensor) -> Tensor:
        mask = causal_mask(x.shape[1], x.device)  # (T, T)
        for i in layer_range:
            x = layers[i](x, mask=mask)
        return x  # (b, T, C)

    if rank == 0:
        return lambda tokens: run(range(split), model.decoder.embed(tokens))
    return lambda x: model.output(model.decoder.final_norm(run(range(split, len(layers)), x)))


def pipeline_worker(
    rank: int,
    world_size: int,
    config: TransformerConfig,
    inputs: Tensor,
    targets: Tensor,
    n_microbatches: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, Tensor]:
    """Two-stage pipeline parallelism with GPipe's schedule, for one batch; run it with
    `launch(pipeline_worker, 2, ...)`.

    Both ranks build the same model from the seed (untied output weights: the two ends of the
    model live on different ranks); rank 0 keeps the embeddings and the first half of the
    layers, rank 1 the rest. The batch is cut into micro-batches; rank 0 runs every forward and
    sends the activations to rank 1, which computes the loss, runs its backwards and sends the
    gradients of those activations back; rank 0 finishes the backwards. Each rank returns the
    gradients of the parameters it holds; together they equal one process's gradients.

    Shapes:
        inputs, targets (B, T) int64, B divisible by n_microbatches  ->  {name: gradient}

    Book: Chapter 4, Scaling (parallelism).
    """
    if world_size != 2:
        raise ValueError(f"this demo has two stages: world_size must be 2, got {world_size}")
    if config.tie_weights:
        raise ValueError("use tie_weights=False: the embedding and the output sit on two ranks")
    if inputs.shape[0] % n_microbatches:
        raise ValueError(f"batch {inputs.shape[0]} must divide into {n_microbatches} micro-batches")
    torch.manual_seed(seed)
    model = DecoderOnly(config).to(dtype)
    stage = _stage(model, rank, config.n_layers // 2)
    b, T, C = inputs.shape[0] // n_microbatches, inputs.shape[1], config.d_model
    kept = []  # what each forward needs for its backward
    for m in range(n_microbatches):  # all forwards ...
        rows = slice(m * b, (m + 1) * b)
        if rank == 0:
            out = stage(inputs[rows])  # (b, T, C)
            dist.send(out.detach(), dst=1)
            kept.append(out)
        else:
            received = torch.empty(b, T, C, dtype=dtype)
            dist.recv(received, src=0)
            received.requires_grad_(True)
            logits = stage(received)  # (b, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), targets[rows].flatten())
            kept.append((received, loss / n_microbatches))  # the mean over micro-batches
    for m in range(n_microbatches):  # ... then all backwards
        if rank == 1:
            received, loss = kept[m]
            loss.backward()
            dist.send(received.grad, dst=0)
        else:
            grad = torch.empty(b, T, C, dtype=dtype)
            dist.recv(grad, src=1)
            kept[m].backward(grad)
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
