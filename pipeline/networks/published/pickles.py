"""Read NVlabs' EDM and EDM2 network pickles as data, without running anything they carry.

A published snapshot (`edm-*.pkl`, `edm2-img512-*.pkl`) is a `pickle.dump` of a dict whose `ema` entry is a
network saved by NVlabs' `torch_utils.persistence`: each persistent object is stored as
`_reconstruct_persistent_obj(meta)`, where `meta` holds the class's source code, its name and the object's
`__dict__`. An ordinary unpickle imports and executes that source. This reader does not: its unpickler
resolves only the globals listed below, each to a function of this module or of torch/numpy that rebuilds
data (tensors, arrays, containers); a persistent object becomes a `PersistentObject` (class name, constructor
kwargs, state) and a torch container module a `ModuleData`. Every other global is refused, so a file that
would run a command when unpickled the ordinary way is rejected before anything in it runs.
"""

from __future__ import annotations

import collections
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError


@dataclass
class ModuleData:
    """A module's pickled `__dict__`, kept as data (torch containers such as ModuleDict)."""

    state: dict = field(default_factory=dict)

    def __setstate__(self, state: dict) -> None:  # pickle's BUILD: the object's __dict__
        self.state = state


@dataclass
class PersistentObject(ModuleData):
    """A `torch_utils.persistence` object: its class name and state; its embedded source is never run."""

    class_name: str = ""

    @property
    def kwargs(self) -> dict:
        """The keyword arguments the network was constructed with."""
        return dict(self.state.get("_init_kwargs", {}))


def _persistent(meta: dict) -> PersistentObject:
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    return PersistentObject(state=meta.get("state") or {}, class_name=meta["class_name"])


def _module_data(cls_name: str):
    # NEWOBJ calls `cls.__new__(cls)` then BUILD sets the state: a ModuleData subclass stands in for the module.
    return type(cls_name, (ModuleData,), {})


def _parameter(data: torch.Tensor, requires_grad: bool, *_hooks) -> torch.Tensor:
    return data  # a Parameter's data; training flags are not needed to load weights


def _storage_from_bytes(data: bytes):
    # A storage pickled outside torch.save carries a torch.save payload; read it with torch's own
    # weights-only unpickler, which rebuilds storages and nothing else.
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_multiarray():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    return multiarray


_MULTIARRAY = _numpy_multiarray()
_EASYDICT = type("EasyDict", (dict,), {})
_ALLOWED = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EASYDICT,
    ("builtins", "set"): set,
    ("builtins", "slice"): slice,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(module, name): getattr(_MULTIARRAY, name)
       for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")},
    **{("torch.nn.modules.container", name): _module_data(name) for name in ("ModuleDict", "ModuleList", "Sequential")},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def read_pickle(path: str | Path) -> dict:
    """The snapshot dict of a published network pickle, with every persistent object as data."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"teacher checkpoint {path} not found: download the published file (see the README, "
                            "'Published teachers') and put it there, or set teacher.source: pretrain")
    try:
        with path.open("rb") as f:
            data = _Unpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise PipelineError(f"{path} is not a network pickle this loader can read safely ({exc}); nothing from "
                            "the file was imported or run. Use NVlabs' published EDM or EDM2 snapshots") from None
    if not isinstance(data, dict) or not isinstance(data.get("ema"), PersistentObject):
        raise PipelineError(f"{path} holds no 'ema' network: expected an EDM or EDM2 training snapshot")
    return data


def state_dict(obj: ModuleData, prefix: str = "") -> dict[str, torch.Tensor]:
    """The flat `state_dict()` a module with this pickled state would return: parameters and persistent buffers."""
    out: dict[str, torch.Tensor] = {}
    skip = set(obj.state.get("_non_persistent_buffers_set", ()))
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (obj.state.get(kind) or {}).items():
            if tensor is not None and name not in skip:
                out[prefix + name] = tensor
    for name, child in (obj.state.get("_modules") or {}).items():
        if child is not None:
            out.update(state_dict(child, f"{prefix}{name}."))
    return out
