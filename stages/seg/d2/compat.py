"""The one place that makes detectron2 0.6 importable on sapnet's stack (torch 2.14, Pillow >= 10, NumPy 2).

detectron2 has no usable PyPI release; ``scripts/install_detectron2.sh`` installs it by one of three routes and
records which in ``<sys.prefix>/detectron2-route.txt``. The usual route here ("pb1-patched") is upstream v0.6
installed as pure Python, without the compiled ``detectron2._C``. :func:`apply` then fixes, before detectron2 is
imported:

1. ``detectron2._C`` is imported at module level by ``layers/deform_conv.py``, ``layers/rotated_boxes.py``,
   ``layers/roi_align_rotated.py`` and ``evaluation/fast_eval_api.py``. A placeholder module is registered under
   that name; any op looked up on it raises :class:`UnavailableOpError` naming the op (rotated boxes, deformable
   convolution, fast COCOeval). SOLOv2 with an R50/R101-FPN backbone uses none of them; ROIAlign and NMS come
   from torchvision. ``nms_rotated`` (looked up on ``torch.ops.detectron2``) fails with torch's AttributeError.
2. Pillow >= 10 dropped ``PIL.Image.LINEAR``, used as a default argument in ``detectron2.data.transforms``:
   it is set to ``PIL.Image.BILINEAR`` (the same filter) when missing.
3. ``detectron2.model_zoo`` imports ``pkg_resources``, gone from setuptools >= 81: checked, with a clear
   :class:`DependencyError` asking for ``setuptools<81``.
4. Not patchable here, so done by the caller: ``COCOEvaluator`` must be built with ``use_fast_impl=False``
   (the fast path needs ``_C``); :mod:`stages.seg.d2.train` does that.

On a full official install (a compiled ``detectron2/_C*.so`` next to the package) fix 1 is skipped. Fixes 2-3 are
harmless there. :func:`apply` is idempotent.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

from stages.common.errors import DependencyError

ROUTE_FILE_NAME = "detectron2-route.txt"
INSTALL_HINT = "run `make install` (or `bash scripts/install_detectron2.sh .venv/bin/python`)"

#: ops of the compiled extension, by what uses them (for error messages and :func:`describe_install`).
NATIVE_OPS: dict[str, str] = {
    "box_iou_rotated": "rotated boxes (RotatedBoxes IoU)",
    "nms_rotated": "rotated boxes (rotated NMS)",
    "roi_align_rotated_forward": "rotated boxes (ROIAlignRotated)",
    "roi_align_rotated_backward": "rotated boxes (ROIAlignRotated)",
    "deform_conv_forward": "deformable convolution (DCN)",
    "deform_conv_backward_input": "deformable convolution (DCN)",
    "deform_conv_backward_filter": "deformable convolution (DCN)",
    "modulated_deform_conv_forward": "deformable convolution (DCNv2)",
    "modulated_deform_conv_backward": "deformable convolution (DCNv2)",
    "InstanceAnnotation": "fast COCOeval (use COCOEvaluator(use_fast_impl=False))",
    "COCOevalEvaluateImages": "fast COCOeval (use COCOEvaluator(use_fast_impl=False))",
    "COCOevalAccumulate": "fast COCOeval (use COCOEvaluator(use_fast_impl=False))",
}

_PLACEHOLDER_MARK = "__sapnet_placeholder__"
_state = {"applied": False}


class UnavailableOpError(DependencyError, AttributeError):
    """A compiled detectron2 op was requested on an install without ``detectron2._C``.

    Also an ``AttributeError`` so ``hasattr``/``getattr(..., default)`` probes keep working.
    """


class _MissingNativeOps(types.ModuleType):
    """Placeholder for ``detectron2._C``: every op lookup raises :class:`UnavailableOpError`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        what = NATIVE_OPS.get(name, "a compiled detectron2 op")
        raise UnavailableOpError(
            f"detectron2._C.{name} is unavailable: this detectron2 was installed without its compiled "
            f"extension ({_route_or_unknown()} route), so {what} cannot be used. Use a config without it, "
            "or install the official detectron2 build (https://github.com/facebookresearch/detectron2)."
        )

    # collect_env_info() (called by detectron2's default_setup) queries these three.
    @staticmethod
    def get_compiler_version() -> str:
        return "not built (pure-Python detectron2)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not built (pure-Python detectron2)"

    @staticmethod
    def has_cuda() -> bool:
        return False


def _detectron2_dir() -> Path | None:
    """The installed ``detectron2`` package directory, found without importing it (None if absent)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def has_native_ops() -> bool:
    """True when a compiled ``detectron2/_C*.so`` (an official build) is installed."""
    pkg = _detectron2_dir()
    if pkg is None:
        return False
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any((pkg / f"_C{suffix}").exists() for suffix in suffixes) or any(pkg.glob("_C.*.so"))


def read_route_record(prefix: str | Path | None = None) -> dict[str, Any]:
    """The record written by ``scripts/install_detectron2.sh`` in ``<prefix>/detectron2-route.txt``.

    ``prefix`` defaults to ``sys.prefix``; returns ``{}`` when there is no (readable) record.
    """
    path = Path(prefix if prefix is not None else sys.prefix) / ROUTE_FILE_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _route_or_unknown() -> str:
    return str(read_route_record().get("route", "unknown"))


def _check_pkg_resources() -> None:
    if importlib.util.find_spec("pkg_resources") is None:
        raise DependencyError(
            "detectron2 0.6 imports `pkg_resources`, which setuptools >= 81 no longer provides: "
            "install `setuptools<81` into this environment (`pip install 'setuptools<81'`)"
        )


def _patch_pillow() -> None:
    from PIL import Image

    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]


def _install_placeholder() -> None:
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return
    module = _MissingNativeOps(
        "detectron2._C", "placeholder for detectron2's missing compiled ops (sapnet)"
    )
    module.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    setattr(module, _PLACEHOLDER_MARK, True)
    sys.modules["detectron2._C"] = module
    if (
        "detectron2" in sys.modules
    ):  # already imported: also expose it as an attribute of the package
        sys.modules["detectron2"]._C = module  # type: ignore[attr-defined]


def _quiet_known_warnings() -> None:
    # Cosmetic deprecations emitted while detectron2 0.6 imports/runs on torch 2.14.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    warnings.filterwarnings(
        "ignore", message=r".*torch\.meshgrid.*indexing.*", category=UserWarning
    )
    warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")


def apply() -> None:
    """Make detectron2 importable on this stack (see the module docstring). Idempotent.

    Raises:
        DependencyError: detectron2 is not installed, or ``pkg_resources`` is missing (setuptools >= 81).
    """
    if _state["applied"]:
        return
    if _detectron2_dir() is None:
        raise DependencyError(f"detectron2 is not installed in {sys.prefix}: {INSTALL_HINT}")
    _check_pkg_resources()
    _patch_pillow()
    _quiet_known_warnings()
    if not has_native_ops():
        _install_placeholder()
    _state["applied"] = True


def import_detectron2() -> types.ModuleType:
    """Apply the fixes and import detectron2; returns the ``detectron2`` module.

    Raises:
        DependencyError: detectron2 is missing or fails to import (the message says why and how to fix it).
    """
    apply()
    try:
        import detectron2
    except ImportError as exc:
        raise DependencyError(
            f"detectron2 is installed but fails to import ({exc}): {INSTALL_HINT}"
        ) from exc
    return detectron2


def detectron2_available() -> bool:
    """True when detectron2 is installed and imports with the fixes applied (never raises)."""
    try:
        import_detectron2()
    except DependencyError:
        return False
    return True


def describe_install() -> dict[str, Any]:
    """What detectron2 install this is, for logs, README and ``sapnet train-seg`` reports.

    Returns a dict with ``installed`` (bool), ``version`` (str | None), ``route`` (from the install record:
    "preinstalled", "official", "pb1-patched" or "unknown"), ``route_record`` (the whole record),
    ``native_ops`` (bool: compiled ``_C`` present), ``unavailable`` (sorted list of features that cannot be
    used) and ``notes`` (list of str). Never raises.
    """
    info: dict[str, Any] = {
        "installed": False,
        "version": None,
        "route": "unknown",
        "route_record": read_route_record(),
        "native_ops": False,
        "unavailable": [],
        "notes": [],
    }
    info["route"] = str(info["route_record"].get("route", "unknown"))
    if _detectron2_dir() is None:
        info["notes"].append(f"detectron2 is not installed: {INSTALL_HINT}")
        return info
    info["installed"] = True
    info["native_ops"] = has_native_ops()
    try:
        info["version"] = str(getattr(import_detectron2(), "__version__", "unknown"))
    except DependencyError as exc:
        info["notes"].append(str(exc))
    if not info["native_ops"]:
        info["unavailable"] = sorted(set(NATIVE_OPS.values()))
        info["notes"].append(
            "no compiled detectron2._C: COCOEvaluator runs with use_fast_impl=False (pycocotools COCOeval)"
        )
    return info
