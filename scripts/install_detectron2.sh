#!/usr/bin/env bash
# Install detectron2 into the interpreter PYTHON without a human in the loop.
#
# Usage: bash scripts/install_detectron2.sh PYTHON
#   (called by `make install` as `bash scripts/install_detectron2.sh .venv/bin/python`)
#
# detectron2 has no usable release on PyPI (see docs of `sapnet train-seg`), so three routes are tried, in order:
#   1. "preinstalled": `import detectron2` already works in PYTHON -> keep it, change nothing;
#   2. "official":     build the official source (git+https://github.com/facebookresearch/detectron2.git).
#                      Reachability is probed first under a short timeout (SAPNET_D2_PROBE_TIMEOUT, 30 s) so an
#                      unreachable GitHub fails fast; a reachable one builds the C++ ops under
#                      SAPNET_D2_BUILD_TIMEOUT (1800 s). SAPNET_D2_SKIP_OFFICIAL=1 skips this route;
#   3. "pb1-patched":  download the `pb1-detectron2==0.6` sdist (= upstream v0.6 without its C++ sources),
#                      patch its setup.py at build time (model-zoo YAMLs as package data, no C++ extension) and
#                      install it as pure Python with its dependencies. The ops that need `detectron2._C`
#                      (rotated boxes, deformable conv, fast COCOeval) are then unavailable; sapnet's
#                      stages/seg/d2/compat.py handles that at run time.
# The route taken is written as JSON to `<sys.prefix of PYTHON>/detectron2-route.txt`, which
# `stages.seg.d2.compat.describe_install()` reads. Idempotent; exits non-zero if every route fails.
set -euo pipefail

PY="${1:-}"
if [[ -z "$PY" ]]; then
    echo "usage: $0 PYTHON" >&2
    exit 2
fi
if ! "$PY" -c "import sys" 2>/dev/null; then
    echo "install_detectron2: '$PY' is not a working Python interpreter" >&2
    exit 2
fi

PB1_SPEC="pb1-detectron2==0.6"
OFFICIAL_URL="https://github.com/facebookresearch/detectron2.git"
PROBE_TIMEOUT="${SAPNET_D2_PROBE_TIMEOUT:-30}"
BUILD_TIMEOUT="${SAPNET_D2_BUILD_TIMEOUT:-1800}"
PREFIX="$("$PY" -c "import sys; print(sys.prefix)")"
ROUTE_FILE="$PREFIX/detectron2-route.txt"

log() { echo "[install_detectron2] $*" >&2; }

write_route() {  # write_route ROUTE SOURCE
    "$PY" - "$ROUTE_FILE" "$1" "$2" <<'EOF'
import datetime
import json
import sys

import detectron2

path, route, source = sys.argv[1:4]
record = {
    "route": route,
    "source": source,
    "version": getattr(detectron2, "__version__", "unknown"),
    "installed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
}
with open(path, "w", encoding="utf-8") as fh:
    json.dump(record, fh, indent=2)
    fh.write("\n")
EOF
    log "route '$1' recorded in $ROUTE_FILE"
}

d2_imports() { "$PY" -c "import detectron2" >/dev/null 2>&1; }

# --- route 1: already importable -------------------------------------------------------------------------------
if d2_imports; then
    version="$("$PY" -c "import detectron2; print(detectron2.__version__)")"
    log "route 1 (preinstalled): detectron2 $version already imports in $PY; keeping it"
    if [[ ! -f "$ROUTE_FILE" ]]; then
        write_route preinstalled "found importable in $PREFIX"
    else
        log "previous record kept: $(tr -d '\n' <"$ROUTE_FILE")"
    fi
    exit 0
fi
log "route 1 (preinstalled): detectron2 is not importable in $PY"

# --- route 2: official source ----------------------------------------------------------------------------------
if [[ "${SAPNET_D2_SKIP_OFFICIAL:-0}" == "1" ]]; then
    log "route 2 (official): skipped (SAPNET_D2_SKIP_OFFICIAL=1)"
elif GIT_TERMINAL_PROMPT=0 timeout "$PROBE_TIMEOUT" git ls-remote --heads "$OFFICIAL_URL" >/dev/null 2>&1; then
    log "route 2 (official): $OFFICIAL_URL reachable; building (C++ ops, several minutes, limit ${BUILD_TIMEOUT}s)"
    if GIT_TERMINAL_PROMPT=0 timeout "$BUILD_TIMEOUT" "$PY" -m pip install --no-build-isolation \
        "git+$OFFICIAL_URL" "setuptools<81" && d2_imports; then
        write_route official "git+$OFFICIAL_URL"
        exit 0
    fi
    log "route 2 (official): build failed or timed out; falling back"
else
    log "route 2 (official): $OFFICIAL_URL not reachable within ${PROBE_TIMEOUT}s; falling back"
fi

# --- route 3: pb1-detectron2 sdist, patched to pure Python ------------------------------------------------------
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "route 3 (pb1-patched): torch is not importable in $PY (the sdist's setup.py imports it); install the"
    log "project first (pip install -e .), then rerun this script"
    log "FAILED: no route could install detectron2 into $PY"
    exit 1
fi
log "route 3 (pb1-patched): downloading the $PB1_SPEC sdist"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sapnet-d2.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if ! "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: -d "$WORK" "$PB1_SPEC"; then
    log "route 3 (pb1-patched): download of $PB1_SPEC failed"
    log "FAILED: no route could install detectron2 into $PY"
    exit 1
fi
tar -xzf "$WORK"/pb1-detectron2-*.tar.gz -C "$WORK"
SRC="$(find "$WORK" -mindepth 1 -maxdepth 1 -type d -name 'pb1-detectron2-*' | head -n 1)"
log "route 3 (pb1-patched): patching $SRC/setup.py (model-zoo package data, no C++ extension)"
"$PY" - "$SRC/setup.py" <<'EOF'
import sys

path = sys.argv[1]
text = open(path, encoding="utf-8").read()
patches = [
    # The sdist ships the YAMLs under detectron2/model_zoo/configs but no top-level configs/, which
    # get_model_zoo_configs() globs (and which it would symlink over the shipped copies).
    (
        'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
        'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
    ),
    # The sdist has no detectron2/layers/csrc, so the extension cannot be compiled: install pure Python.
    ("ext_modules=get_extensions(),", "ext_modules=[],"),
    ('cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},', ""),
]
for old, new in patches:
    if text.count(old) != 1:
        sys.exit(f"install_detectron2: cannot patch {path}: expected exactly one {old!r}")
    text = text.replace(old, new)
open(path, "w", encoding="utf-8").write(text)
EOF
log "route 3 (pb1-patched): pip install --no-build-isolation (pure Python + dependencies)"
if "$PY" -m pip install --quiet --no-build-isolation "$SRC" "setuptools<81" && d2_imports; then
    write_route pb1-patched "$PB1_SPEC sdist, setup.py patched: model-zoo YAMLs, ext_modules=[]"
    exit 0
fi
log "route 3 (pb1-patched): install failed"
log "FAILED: no route could install detectron2 into $PY"
exit 1
