"""The backbones' inference runtime (``features.runtime``): eager PyTorch, or ONNX Runtime.

``onnx`` exports the very torch module the ``torch`` runtime calls (legacy TorchScript exporter,
dynamic batch / sequence axes) and runs it with ONNX Runtime's full graph optimisations (fused
attention, layer norm and GELU for MiniLM; folded batch norm, fused depthwise conv + activation
for EfficientNet), where eager PyTorch dispatches every small op separately: several times
faster on CPU at equal outputs (benchmarks/encoders_speed.py).

Exports are built at first use from the installed weights and cached in :func:`cache_dir`, one
folder per hash of what determines the graph: the backbone (package versions, or a local
directory's path and file fingerprint), the export settings, the exporter's and this module's
versions. A cached
model is used only if its sha256 matches the one recorded beside it; anything else is rebuilt,
with a warning.

Threads: a session takes torch's intra-op thread count when it is created, so each call site's
:func:`aladin.runtime.set_threads` (1 per query in the service, all cores in the features stage)
applies to both runtimes alike.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence, get_args

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..inputs import fingerprint
from ..io import atomic_path, sha256_file, write_json
from ..params import Runtime

log = logging.getLogger("aladin")

RUNTIMES: tuple[str, ...] = get_args(Runtime)
OPSET = 17
EXPORT_VERSION = 1        # bump when what gets exported changes (the modules, their inputs or outputs)
MODEL, META = "model.onnx", "meta.json"


def cache_dir() -> Path:
    """$ALADIN_CACHE_DIR/onnx, else the user's cache ($XDG_CACHE_HOME or ~/.cache)/aladin/onnx:
    outside the repository, so git never sees it and `dvc exp run --temp` copies share it."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("ALADIN_CACHE_DIR") or user_cache / "aladin") / "onnx"


def check_runtime(runtime: str, device: torch.device) -> None:
    """A ConfigError naming features.runtime unless `runtime` can run on `device`."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"features.runtime: must be one of {list(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnx" and device.type != "cpu":
        raise ConfigError(f"features.runtime: onnx runs on the CPU, not on {device} (set features.device: cpu "
                          f"or features.runtime: torch)")


def export_key(info: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Everything the exported graph depends on; its hash names the cache folder. A packaged backbone
    is its package versions (in `info`); a local directory, its files' fingerprint too (edited in place)."""
    import onnx

    files = fingerprint(info["path"], "features.runtime") if "path" in info else None
    key = {"backbone": info, "files": files, "settings": settings, "export_version": EXPORT_VERSION,
           "opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__}
    return json.loads(json.dumps(key, sort_keys=True))      # as the sidecar will read back (str dict keys)


def _valid(folder: Path, key: dict[str, Any]) -> str | None:
    """Why the cached export in `folder` must not be used, or None when it is sound."""
    model, meta = folder / MODEL, folder / META
    if not model.is_file():
        return f"{model} is missing"
    try:
        recorded = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"{meta} is unreadable ({e})"
    if recorded.get("key") != key:
        return f"{meta} records another export"
    if recorded.get("sha256") != sha256_file(model):
        return f"{model} does not match its recorded sha256 (corrupt or modified)"
    return None


def cached_export(module: nn.Module, example: Sequence[torch.Tensor], input_names: Sequence[str],
                  dynamic_axes: dict[str, dict[int, str]], key: dict[str, Any]) -> Path:
    """The ONNX file of `module` for `key`: the cached one when it checks out, else a fresh export."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    folder = cache_dir() / digest
    if folder.exists():
        problem = _valid(folder, key)
        if problem is None:
            return folder / MODEL
        log.warning("cached ONNX export: %s; rebuilding it", problem)
    log.info("exporting %s to ONNX (once; cached in %s)", key["backbone"].get("name"), folder)
    module.eval()               # the exporter leaves every submodule in the mode of `module`: dropout off
    with atomic_path(folder, is_dir=True) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")             # tracer warnings about Python-side shape maths
            torch.onnx.export(module, tuple(example), str(tmp / MODEL), input_names=list(input_names),
                              output_names=["out"], dynamic_axes={**dynamic_axes, "out": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        write_json(tmp / META, {"key": key, "sha256": sha256_file(tmp / MODEL)})
    return folder / MODEL


class OnnxFunction:
    """A torch module exported once and run by ONNX Runtime: torch tensors in, a torch tensor out."""

    def __init__(self, path: Path, input_names: Sequence[str], threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        # Idle pool threads sleep rather than spin (torch's OMP_WAIT_POLICY=PASSIVE here): spinning
        # took the cores the image decoders and other processes needed (batched text -30% on 2 cores).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3                       # its notes on unused initialisers are noise here
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names, self.threads, self.path = list(input_names), threads, path

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(x.cpu().numpy()) for n, x in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def compile_module(module: nn.Module, runtime: str, device: torch.device, info: dict[str, Any],
                   example: Sequence[torch.Tensor], input_names: Sequence[str],
                   dynamic_axes: dict[str, dict[int, str]], settings: dict[str, Any],
                   threads: int | None = None) -> Callable[..., torch.Tensor]:
    """`module` itself (runtime torch) or its ONNX Runtime twin with `threads` threads (default:
    torch's count now). Example inputs fix the static sizes; `settings` are the ones the graph
    depends on beyond `info`."""
    check_runtime(runtime, device)
    if runtime == "torch":
        return module
    key = export_key(info, {**settings, "inputs": list(input_names), "dynamic_axes": dynamic_axes,
                            "example_shapes": [list(x.shape) for x in example]})
    try:
        path = cached_export(module, example, input_names, dynamic_axes, key)
    except RuntimeError as e:                           # the exporter's errors included
        raise ConfigError(f"features.runtime: onnx cannot export {info.get('name')} ({e}); use torch") from None
    return OnnxFunction(path, input_names, threads or torch.get_num_threads())
