"""Training on several processes, GPUs or machines: torch.distributed under ``torchrun``.

`start` joins the process group ``torchrun`` describes in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...): NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``), gloo on CPU. Outside ``torchrun`` (or with one process) it does nothing
and every helper here is a no-op, so single-process code paths are unchanged.

What a distributed command does with the `Group` it gets back:

- each global batch of the seeded order (`edge.data.datasets.EpochBatches`) is cut into equal
  contiguous shares, one per rank (`Group.share`), so the global batch and the per-epoch sample
  order are those of a single process, for any number of processes;
- `Group.prepare` wraps the model in ``DistributedDataParallel`` (gradients averaged), with
  ``sync_bn`` its BatchNorms computing batch statistics over the global batch (torch's
  ``SyncBatchNorm`` on GPUs; `SyncBatchNorm2d` on CPU, where torch's has no kernel);
- counts such as correct / total are summed over ranks (`Group.total`), so a validation
  accuracy is over the whole validation set;
- only rank 0 writes files and prints (`say`; progress bars are off elsewhere), and files rank 0
  wrote reach the other ranks by broadcast (`Group.file_bytes`, `edge.train.shared.load_shared`): machines need not
  share a disk;
- a step that may fail on one rank alone (opening data, checking the output) runs inside
  `together`: every rank learns that one failed and stops with a clear message instead of
  waiting for it. A crash anywhere else ends the rank's process, and ``torchrun`` then stops the
  others; collectives time out after ``EDGE_DIST_TIMEOUT`` seconds (default 1800) at worst.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from edge.core.config import ConfigError

DEFAULT_TIMEOUT_S = 1800


class DistributedError(ConfigError):
    """Another rank failed: this one stops too (a clear one-line error, as `edge.cli` reports)."""


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks of a run (rank 0 of 1 outside ``torchrun``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sync_bn: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def share(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (parts differ in size by one at most)."""
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)

    def total(self, *numbers: float) -> list[float]:
        """Each number summed over all ranks."""
        values = torch.tensor(numbers, dtype=torch.float64, device=self._device())
        if self.active:
            torch.distributed.all_reduce(values)
        return values.tolist()

    def prepare(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: ``model`` itself, or under ``torchrun`` wrapped in DDP (its
        BatchNorms synchronised first with ``sync_bn``). ``model`` keeps its weights and names."""
        if not self.active:
            return model
        if self.sync_bn:
            convert_sync_batchnorm(model, device)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def average_gradients(self, parameters) -> None:
        """Average the gradients of parameters trained outside the DDP module (e.g. a feature
        hint's regressor)."""
        if not self.active:
            return
        for p in parameters:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world)

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before each
        training step: after the last step of an epoch they differ, and validation and the saved
        file must see one model."""
        if self.active:
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def file_bytes(self, path: str | os.PathLike) -> bytes | None:
        """The contents of ``path`` as rank 0 sees it, on every rank (None: rank 0 has no such file)."""
        path = Path(path)
        if not self.active:
            return path.read_bytes() if path.is_file() else None
        data = path.read_bytes() if self.main and path.is_file() else None
        size = torch.tensor([-1 if data is None else len(data)], dtype=torch.int64, device=self._device())
        torch.distributed.broadcast(size, 0)
        if size.item() < 0:
            return None
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.main \
            else torch.empty(int(size.item()), dtype=torch.uint8)
        buffer = buffer.to(self._device())
        torch.distributed.broadcast(buffer, 0)
        return data if self.main else buffer.cpu().numpy().tobytes()

    def _device(self) -> torch.device:
        """Where collectives run: NCCL only moves CUDA tensors."""
        if self.active and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


_group = Group()


def group() -> Group:
    """The group `start` joined (rank 0 of 1 when none)."""
    return _group


def launched() -> bool:
    """Started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: torch.device, sync_bn: bool = False) -> torch.device:
    """Join ``torchrun``'s process group (NCCL for CUDA ``device``, else gloo) and return the
    device this rank trains on (``cuda:LOCAL_RANK`` when ``device`` is CUDA without an index).
    Outside ``torchrun``: ``device`` unchanged, nothing joined."""
    global _group
    if not launched():
        return device
    if torch.distributed.is_initialized():
        return device
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=float(os.environ.get("EDGE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    _group = Group(rank, world, local, sync_bn)
    if not _group.main:
        os.environ["TQDM_DISABLE"] = "1"  # tqdm's default: no bar on the other ranks
    atexit.register(stop)
    return device


class LaunchError(ConfigError):
    """A rank `launch` started failed (its own error is printed above): the run ends in one line."""


def launch(processes: int, argv: list[str]) -> None:
    """Run ``edge ARGV`` as ``processes`` ranks on this machine (``torchrun --standalone``) and wait
    for them: ``--processes N``, whose options the caller checked before any rank starts. A rank that
    fails ends the run in one line naming it and its exit code (torchrun's launcher would end in its
    ``ChildFailedError`` traceback); its own error is above that line."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(processes), "-m", "edge", *argv])
    logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)  # its note on OMP_NUM_THREADS
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its failure log is our line
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        how = f"was stopped by {failure.signal_name()}" if failure.exitcode < 0 else \
            f"exited with code {failure.exitcode}"
        raise LaunchError(f"--processes {processes}: rank {rank} {how} (its error is above): every rank "
                          f"stopped") from None


def check_processes(processes: int, batch: int) -> bool:
    """Whether ``--processes`` asks this process to `launch` ranks: not when it is one of the ranks of a
    run of as many processes (its own launch, or ``torchrun``'s). Refused under a ``torchrun`` of another
    number of processes, and for a global ``--batch`` the processes cannot share evenly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and launched() and world != processes:
        raise ConfigError(f"--processes {processes}: this process is already one of torchrun's {world}; "
                          f"leave --processes out under torchrun")
    if batch % processes:
        raise ConfigError(f"--batch {batch} is the global batch: it must divide evenly among the --processes "
                          f"{processes}")
    return processes > 1 and not launched()


LEAVE_TIMEOUT_S = 60


def stop() -> None:
    """Leave the process group (at exit): wait until every rank is leaving, then tear it down.

    A rank that destroyed its gloo connections and exited while another rank still held them
    (rank 0 writing its file) aborted that rank's process ("terminate called without an active
    exception", SIGABRT) in about one run in five. The barrier makes the ranks leave together; a
    rank that never comes (it crashed elsewhere) delays the exit by ``LEAVE_TIMEOUT_S`` at most.
    """
    global _group
    if torch.distributed.is_initialized():
        try:
            if torch.distributed.get_backend() == "gloo":
                torch.distributed.monitored_barrier(timeout=timedelta(seconds=LEAVE_TIMEOUT_S))
            else:
                torch.distributed.barrier()
        except RuntimeError:
            pass  # another rank is gone already: nothing to wait for
        torch.distributed.destroy_process_group()
    _group = Group()


def say(text: str) -> None:
    """Print ``text`` on stderr, from rank 0 only."""
    if _group.main:
        import click

        click.echo(text, err=True)


@contextmanager
def together(what: str):
    """Run a step that may fail on one rank alone (e.g. its data or output is missing): when any
    rank fails, that rank raises its own error and every other rank raises `DistributedError`
    naming it, instead of waiting in the next collective."""
    g = group()
    if not g.active:
        yield
        return
    try:
        yield
    except Exception:
        _failed_ranks(g, True)
        raise
    failed = _failed_ranks(g, False)
    if failed:
        raise DistributedError(f"rank {', '.join(map(str, failed))} failed while {what} (its error is above): "
                               f"rank {g.rank} stops too")


def _failed_ranks(g: Group, failed: bool) -> list[int]:
    flags = torch.zeros(g.world, dtype=torch.int64, device=g._device())
    flags[g.rank] = int(failed)
    torch.distributed.all_reduce(flags)
    return [r for r, f in enumerate(flags.tolist()) if f]


# ---------------------------------------------------------------- synchronised BatchNorm


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (every rank's share),
    for CPU process groups (gloo): torch's ``SyncBatchNorm`` runs on GPUs only. The sums go
    through a differentiable all-reduce, so the gradients are those of the global batch too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.distributed.is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
        sums = _GlobalSum.apply(local)
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _GlobalSum.apply((centred * centred).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class _GlobalSum(torch.autograd.Function):
    """A tensor summed over ranks; its gradient is the ranks' gradients summed likewise."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        torch.distributed.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        torch.distributed.all_reduce(total)
        return total


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d of ``model`` synchronised, in place, with the same parameters and
    buffers (the state dict's names and values do not change)."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d and child.affine and child.track_running_stats:
            if device.type == "cuda":
                synced = nn.SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            else:
                synced = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            synced.to(device, child.running_mean.dtype)  # a float64 model keeps float64 statistics
            synced.weight, synced.bias = child.weight, child.bias  # the very parameters, as before
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model
