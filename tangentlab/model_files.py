"""MACE model files, read without running any code they hold.

A MACE ``.model`` file is a pickled module: a plain ``torch.load`` of it can run any code the
file holds. tangentlab never does one. Every model file goes through
:func:`tangentlab.safe_load.load_file`, the one place that calls ``torch.load``, always with
``weights_only=True``:

- **weights-only files** (suffix ``.pt``, every registered model version): the MACE
  architecture configuration as JSON (the arguments ``mace.tools.scripts_utils.
  extract_config_mace_model`` returns, classes and gates named from MACE's own registries) and
  the state dict's tensors, rebuilt through MACE's own constructor. Nothing but tensors and
  plain data may be in them.
- **the starting model** the user names (a MACE ``.model``): read with an allow-list of the
  MACE, e3nn and torch classes a ScaleShiftMACE is made of (:data:`tangentlab.safe_load.MACE_GLOBALS`), so a file
  that needs anything else is refused before any of it runs. The pickled TorchScript and
  ``torch.fx`` code inside a real model (e3nn's compiled tensor products, opt_einsum graphs)
  is neither compiled nor run: the model read is only a skeleton from which
  :func:`starting_weights` takes the configuration and the weights, once, into a weights-only
  file that every later load uses.

Fine-tuned models are also written as standard ``.model`` files beside their weights-only file,
for users (``MACECalculator`` loads them); tangentlab never reads those back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mace  # noqa: F401  (mace must be imported before e3nn)
import numpy as np
import torch
from e3nn import get_optimization_defaults, o3, set_optimization_defaults
from mace import modules
from mace.tools.scripts_utils import extract_config_mace_model

from tangentlab.inputs import ModelFileError
from tangentlab.safe_load import load_file

FORMAT = "tangentlab-mace-weights"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".pt"
EXPORT_SUFFIX = ".model"
#: Model classes rebuilt from a weights-only file (``extract_config_mace_model`` covers them).
MODEL_CLASSES = {"ScaleShiftMACE": modules.ScaleShiftMACE}
# Configuration values that are MACE classes or functions, named by MACE's own registries.
_NAMED = {
    "interaction_cls": modules.interaction_classes,
    "interaction_cls_first": modules.interaction_classes,
    "readout_cls": modules.readout_classes,
    "gate": modules.gate_dict,
}
_IRREPS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_ARRAYS = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """
    Set torch's default dtype inside the block and restore the previous one after it.

    Parameters
    ----------
    dtype
        The default dtype inside the block.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _refusal(exc: Exception) -> tuple[str | None, str]:
    """The global a weights-only load refused (None if it failed otherwise), and torch's reason
    without its advice to load the file with ``weights_only=False``."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", text, re.S)
    return (found.group(1) if found else None,
            " ".join(reason.group(1).split()) if reason else text.splitlines()[0])


def _config_json(model: torch.nn.Module) -> str:
    """The model's MACE constructor arguments as JSON; raises for anything not plain data."""
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise ModelFileError(
            f"a {name} cannot be stored weights-only (supported: {', '.join(MODEL_CLASSES)})"
        )
    config = extract_config_mace_model(model)
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _NAMED:
            names = [n for n, obj in _NAMED[key].items() if obj is value]
            if not names:
                raise ModelFileError(
                    f"{name}: {key}={value!r} is not in MACE's registry of {key} values"
                )
            value = names[0]
        elif key in _IRREPS:
            value = None if value is None else str(value)
        elif key in _ARRAYS:
            value = np.asarray(value).tolist()
        elif key == "atomic_numbers":
            value = [int(z) for z in value]
        elif value is not None and not isinstance(value, (bool, int, float, str, list, dict)):
            raise ModelFileError(
                f"{name}: configuration value {key}={value!r} cannot be stored weights-only"
            )
        out[key] = value
    return json.dumps({"class": name, "config": out}, sort_keys=True)


def _constructor_arguments(text: str) -> tuple[type, dict[str, Any]]:
    """The MACE class and constructor arguments stored by :func:`_config_json`."""
    stored = json.loads(text)
    if stored.get("class") not in MODEL_CLASSES:
        raise ModelFileError(f"unknown model class {stored.get('class')!r}")
    config = dict(stored["config"])
    for key, registry in _NAMED.items():
        if config.get(key) not in registry:
            known = ", ".join(map(str, registry))
            raise ModelFileError(f"unknown {key} {config.get(key)!r} (known: {known})")
        config[key] = registry[config[key]]
    for key in _IRREPS:
        if config.get(key) is not None:
            config[key] = o3.Irreps(config[key])
    for key in _ARRAYS:
        config[key] = np.asarray(config[key])
    return MODEL_CLASSES[stored["class"]], config


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary name, then rename: no half files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_weights(model: torch.nn.Module, path: str | Path, *, source: dict | None = None) -> Path:
    """
    Write ``model`` as a weights-only file (atomically).

    Parameters
    ----------
    model
        A MACE model of a class in :data:`MODEL_CLASSES`.
    path
        The file to write.
    source
        Where the model came from (e.g. the pickled file and its sha256), stored with it.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    state = {key: tensor.detach().cpu().clone() for key, tensor in model.state_dict().items()}
    dtype = next(model.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _config_json(model),
        "dtype": str(dtype).removeprefix("torch."),
        "source": json.dumps(source or {}, sort_keys=True),
        "state_dict": state,
    }
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def write_model(model: torch.nn.Module, path: str | Path) -> Path:
    """
    Write a trained model twice: a standard MACE ``.model`` for users, a weights-only file for us.

    Parameters
    ----------
    model
        A MACE model.
    path
        The file name without regard to suffix: ``<stem>.model`` (pickled, what
        ``MACECalculator`` loads; tangentlab never reads it) and ``<stem>.pt`` (weights-only)
        are written, each atomically, the weights-only file last.

    Returns
    -------
    Path
        The weights-only file, the one to register and load.
    """
    path = Path(path)
    export = path.with_suffix(EXPORT_SUFFIX)
    _atomic_write(export, lambda tmp: torch.save(model, tmp))
    return save_weights(model, path.with_suffix(WEIGHTS_SUFFIX))


def _read_payload(path: Path, file: io.BytesIO | None = None) -> dict:
    """The stored dictionary of a weights-only file (from ``file`` if given; ``path`` names it)."""
    if isinstance(file, io.BytesIO):
        head = file.getvalue()[:4]
    else:
        with path.open("rb") as handle:
            head = handle.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip container, a bare pickle
        raise ModelFileError(f"{path} is not a model file (neither weights-only nor a MACE .model)")
    try:
        payload = load_file(path if file is None else file, path)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path} is a pickled file (e.g. a MACE .model), not a weights-only model file: "
            "unpickling it could run code, so it is not loaded. tangentlab reads a .model only "
            "as the starting model named in a campaign's configuration (see docs/operations.md, "
            "'Model files')"
        ) from exc
    except Exception as exc:
        raise ModelFileError(f"{path} is not a readable model file: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a tangentlab weights-only model file")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: unknown format version {payload.get('format_version')!r}")
    return payload


@contextlib.contextmanager
def _e3nn_scripting(script: bool) -> Iterator[None]:
    """Let e3nn TorchScript-compile the code it generates for a model's layers (``script``), or
    not: the layers then run the same operations uncompiled, and building a model costs a
    fraction of the time (most of it goes to the compilation)."""
    before = get_optimization_defaults()["jit_script_fx"]
    set_optimization_defaults(jit_script_fx=script)
    try:
        yield
    finally:
        set_optimization_defaults(jit_script_fx=before)


def read_weights(
    path: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    *,
    file: io.BytesIO | None = None,
    script: bool = True,
) -> torch.nn.Module:
    """
    Rebuild a model from a weights-only file; nothing in the file can run code.

    The model is built under the dtype it was saved in, then cast, so a float32 model read
    as float64 equals the float32 module cast to float64 (buffers included).

    Parameters
    ----------
    path
        A file written by :func:`save_weights`.
    device
        Torch device of the model.
    dtype
        Floating-point dtype of the parameters and buffers.
    file
        The file's bytes, already read (``path`` then only names it in errors).
    script
        TorchScript-compile e3nn's generated layer code, as MACE's own training does (what a
        ``.model`` for users holds). Without it the model computes the same numbers and is
        built several times faster.

    Raises
    ------
    ModelFileError
        If the file is pickled, unreadable or not a model of a known class and configuration.
    """
    path = Path(path)
    payload = _read_payload(path, file)
    try:
        cls, arguments = _constructor_arguments(payload["config"])
        with default_dtype(_DTYPES[payload["dtype"]]), _e3nn_scripting(script):
            model = cls(**arguments)
            result = model.load_state_dict(payload["state_dict"], strict=False)
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot rebuild the model: {exc}") from exc
    # Models saved by older MACE versions lack buffers that newer constructors derive from the
    # configuration (e.g. symmetric contractions' ``weights_0_zeroed``); those keep their
    # constructed values. Every parameter must come from the file, and nothing may be left over.
    parameters = {name for name, _ in model.named_parameters()}
    missing = [key for key in result.missing_keys if key in parameters]
    if missing or result.unexpected_keys:
        raise ModelFileError(
            f"{path}: the stored weights do not fit the stored configuration "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return model.to(device=device, dtype=dtype)


def model_source(path: str | Path) -> dict:
    """Where a weights-only file's model came from (``source_path``, ``source_sha256``), or {}."""
    return json.loads(_read_payload(Path(path)).get("source") or "{}")


# sha256 of the weights-only starting models this process has rebuilt once: the same bytes are
# not rebuilt again only to be checked (a campaign's set-up asks several times, and building a
# MACE model takes a good part of a second).
_CHECKED_WEIGHTS: set[str] = set()


def starting_weights(source: str | Path, models_dir: str | Path) -> tuple[Path, dict]:
    """
    The user's starting model as a weights-only file.

    A weights-only ``source`` is used as it is. A pickled ``source`` (a MACE ``.model``) is read
    once, from the very bytes whose sha256 is logged and returned, with the MACE allow-list of
    :func:`tangentlab.safe_load.load_file` (nothing in it runs), and converted to
    ``<models_dir>/starting-<sha256[:16]>.pt``; later calls find that file and read the
    ``.model`` no more.

    Parameters
    ----------
    source
        The starting model the user named.
    models_dir
        Folder of the converted file.

    Returns
    -------
    tuple[Path, dict]
        The weights-only file to load, and ``source_path`` (resolved), ``source_sha256`` and
        ``pickled`` (whether the source is a pickled file).

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ModelFileError
        If it is not a MACE model that can be stored weights-only, or needs anything beyond
        :data:`tangentlab.safe_load.MACE_GLOBALS` (then nothing of it ran).
    """
    source = Path(source).resolve()
    if not source.is_file():
        raise FileNotFoundError(f"MACE model file not found: {source}")
    data = source.read_bytes()
    record = {"source_path": str(source), "source_sha256": hashlib.sha256(data).hexdigest()}
    try:
        if record["source_sha256"] not in _CHECKED_WEIGHTS:
            read_weights(source, file=io.BytesIO(data), script=False)  # a check only
            _CHECKED_WEIGHTS.add(record["source_sha256"])
        return source, {**record, "pickled": False}
    except ModelFileError:
        pass
    dest = Path(models_dir) / f"starting-{record['source_sha256'][:16]}{WEIGHTS_SUFFIX}"
    with contextlib.suppress(ModelFileError, OSError, json.JSONDecodeError):
        if model_source(dest).get("source_sha256") == record["source_sha256"]:
            return dest, {**record, "pickled": True}
    model = read_mace_model(source, data)
    logger.info("converting the starting model %s (sha256 %s) to the weights-only file %s",
                source, record["source_sha256"], dest)
    save_weights(model, dest, source=record)
    return dest, {**record, "pickled": True}


def read_mace_model(path: str | Path, data: bytes | None = None) -> torch.nn.Module:
    """
    Read a pickled MACE ``.model`` without running anything in it: its configuration and
    weights, for :func:`save_weights` (its compiled code is not loaded, so it cannot predict).

    Parameters
    ----------
    path
        The file.
    data
        Its bytes, already read (``path`` then only names it in errors).

    Raises
    ------
    ModelFileError
        If the file is unreadable, needs anything beyond :data:`tangentlab.safe_load.MACE_GLOBALS` (refused before
        any of it ran), or holds something other than a model of :data:`MODEL_CLASSES`.
    """
    path = Path(path)
    data = path.read_bytes() if data is None else data
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip container, a bare pickle
        raise ModelFileError(f"{path} is not a readable MACE model file: neither a torch file "
                             "nor a pickle")
    with default_dtype(torch.get_default_dtype()):  # MACE's constructors may change it
        try:
            model = load_file(io.BytesIO(data), path, mace_model=True)
        except pickle.UnpicklingError as exc:
            name, reason = _refusal(exc)
            if name is None:
                raise ModelFileError(
                    f"{path} is not a readable MACE model file: {reason}") from None
            raise ModelFileError(
                f"{path} does not hold a MACE model tangentlab can read: it needs {name}, which "
                "is not among the MACE, e3nn and torch classes a MACE model is made of; refused "
                "before anything in it ran"
            ) from None
        except Exception as exc:
            raise ModelFileError(f"{path} is not a readable MACE model file: {exc}") from exc
    if not isinstance(model, tuple(MODEL_CLASSES.values())):
        raise ModelFileError(
            f"{path} does not hold a MACE model tangentlab can store weights-only "
            f"(got {type(model).__name__}; supported: {', '.join(MODEL_CLASSES)})"
        )
    return model
