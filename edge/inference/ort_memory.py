"""How much memory ONNX Runtime may take for one model on the CPU: a graph is code, and a tiny file can
compute a huge tensor from a shape it builds at run time (``Shape`` -> ``Mul`` -> ``ConstantOfShape``, a
``Range`` up to a computed limit, an outer sum by broadcasting) or from constants that ONNX Runtime folds
while it loads the file (``Concat`` of two constants -> ``ConstantOfShape``). The constant scan
(`edge.codec.onnx_scan.oversized_outputs`) sees only literal shapes; these two bounds hold whatever the
graph computes:

- loading (`load_session`): while a session is created the process's data may grow by at most the load
  budget (``RLIMIT_DATA``, restored afterwards); a constant fold that would pass it is skipped by ONNX
  Runtime, and the node is left to run, bounded, at run time;
- running: a CPU session takes its tensors from an arena capped at the run budget (ONNX Runtime's
  shared allocator, registered afresh before a session that needs another cap: a session keeps the arena
  it was created with; `expect_images` says how many images a command keeps in flight). An allocation
  past it fails the call, and `OnnxClassifier` refuses the model in one line (`is_out_of_memory`).

Each budget is at least `MIN_BUDGET` and grows with what an honest model needs: its file (weights expand
when dequantized) and the images in flight. GPU providers have their own memory and are not bounded here.
"""

from __future__ import annotations

import contextlib
import resource

MIN_BUDGET = 768 << 20  # with the process itself, no file under 1 MB makes a command take over 1 GB
BYTES_PER_FILE_BYTE = 32  # a 1-bit weight becomes a float32 when folded
BYTES_PER_IMAGE_BYTE = 32  # activations per input byte: an honest StudentNet needs about 8
_in_flight = {"images": 1}
_arena: dict[str, int] = {}


def expect_images(count: int) -> None:
    """Announce that up to ``count`` images will be in the model's calls at once (before its session is
    opened: its run budget is fixed then)."""
    _in_flight["images"] = max(_in_flight["images"], int(count))


def load_budget(model_bytes: int) -> int:
    return max(MIN_BUDGET, BYTES_PER_FILE_BYTE * model_bytes)


def run_budget(model_bytes: int, image_bytes: int) -> int:
    return max(MIN_BUDGET, BYTES_PER_FILE_BYTE * model_bytes
               + BYTES_PER_IMAGE_BYTE * image_bytes * _in_flight["images"])


def use_capped_arena(options, budget: int) -> int:
    """Make the session of ``options`` take its CPU tensors from an arena capped at ``budget``; -> ``budget``."""
    import onnxruntime as ort

    if _arena.get("cap") != budget:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"max_mem": budget, "arena_extend_strategy": 1}))
        _arena["cap"] = budget
    options.add_session_config_entry("session.use_env_allocators", "1")
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")  # weights: not in it
    return budget


def load_session(source: str | bytes, options, providers: list[str], model_bytes: int):
    """``onnxruntime.InferenceSession``, its constant folding bounded by `load_budget` on the CPU."""
    import onnxruntime as ort

    bounded = providers == ["CPUExecutionProvider"]
    with _data_bound(load_budget(model_bytes)) if bounded else contextlib.nullcontext():
        return ort.InferenceSession(source, options, providers=providers)


@contextlib.contextmanager
def _data_bound(budget: int):
    used = _data_bytes()
    if used is None:  # no /proc (not Linux): unbounded
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _data_bytes() -> int | None:
    """The process's data segment as RLIMIT_DATA counts it (``VmData``); None where the system does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def is_out_of_memory(err: Exception) -> bool:
    """Whether an ONNX Runtime error is an allocation refused (by the capped arena or the system)."""
    text = str(err)
    return "bfc_arena" in text or "Failed to allocate memory" in text or "bad_alloc" in text
