#!/usr/bin/env bash
# The whole sapnet pipeline on examples/coco-mini, on CPU, without weights or network (`make reproduce`).
#
# Usage: bash scripts/reproduce.sh [OUT]          (default OUT: runs/reproduce)
#        FULL=1 bash scripts/reproduce.sh OUT     (also trains SOLOv2 on the top1 pseudo labels)
#
# Stages (each prints its progress; outputs under OUT):
#   points    examples/coco-mini/train/points.json (in the repo; RESAMPLE_POINTS=1 re-samples into OUT/points)
#   propose   sapnet propose --backend classical     -> OUT/store.zarr
#             (--backend sam when SAPNET_SAM_CHECKPOINT is set; the model is read from the file name)
#   select    sapnet select, resnet18 random init    -> OUT/select/
#   export    sapnet export-pseudo, every selector, with the quality report -> OUT/pseudo/
#             (report.md, report.json and report.html, the page to look at: OUT/pseudo/report/report.html)
#   seg       sapnet train-seg on the sapnet pseudo labels, evaluated on val -> OUT/seg_sapnet/
#   seg-top1  (FULL=1) the same on the top1 pseudo labels                      -> OUT/seg_top1/
#   figure    (FIGURE=1, `make figure`) overlays of top1/psm/sapnet/point-aware -> OUT/figure/,
#             docs/figures/selectors-grid.png
#   table     the summary table (scripts/report_table.py)                       -> OUT/table.md, OUT/table.json
#
# Rerunning resumes: a finished stage is skipped (marker OUT/.stages/NAME.done holding its command line).
# A stage whose command changed (other settings) is redone from scratch, and every later stage with it.
# An interrupted stage is rerun; propose and train-seg continue where they stopped.
#
# Settings (environment variables, defaults sized for ~15 min on 2 CPU cores):
#   PY=.venv/bin/python  DEVICE=cpu  FULL=0  RESAMPLE_POINTS=0
#   SELECT_ITERS=60 SELECT_BATCH=2 SELECT_BACKBONE=resnet18 SELECT_SHORT=256 SELECT_MAX=416 SELECT_WARMUP=10
#   SELECT_WEIGHTS=none (imagenet: torchvision weights, downloaded once or from the torch cache)
#   SEG_ITERS=40 SEG_BATCH=2 SEG_MIN=256 SEG_MAX=416 SEG_BACKBONE=R50 SEG_WARMUP=5 (LR warm-up iterations;
#   the 1x schedule's 500 would cover the whole short run) SEG_SEED=0 (detectron2 SEED: a rerun gives the
#   same SOLOv2 numbers; -1 draws a new seed each run)
#   SAPNET_SAM_CHECKPOINT=FILE (use SAM), SAM_MODEL=vit_h|vit_l|vit_b|vit_t (default: from the file name)
#   PROPOSE_BACKEND=NAME|package.module:factory (any other proposal backend; overrides the two above)
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${1:-runs/reproduce}"
EX=examples/coco-mini
PY="${PY:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
DEVICE="${DEVICE:-cpu}"
FULL="${FULL:-0}"
SELECT_ITERS="${SELECT_ITERS:-60}"
SELECT_BATCH="${SELECT_BATCH:-2}"
SELECT_BACKBONE="${SELECT_BACKBONE:-resnet18}"
SELECT_SHORT="${SELECT_SHORT:-256}"
SELECT_MAX="${SELECT_MAX:-416}"
SELECT_WARMUP="${SELECT_WARMUP:-10}"
SELECT_WEIGHTS="${SELECT_WEIGHTS:-none}"
SEG_ITERS="${SEG_ITERS:-40}"
SEG_BATCH="${SEG_BATCH:-2}"
SEG_MIN="${SEG_MIN:-256}"
SEG_MAX="${SEG_MAX:-416}"
SEG_BACKBONE="${SEG_BACKBONE:-R50}"
SEG_WARMUP="${SEG_WARMUP:-5}"
SEG_SEED="${SEG_SEED:-0}"
export PYTHONUNBUFFERED=1

SAPNET=("$PY" -m sapnet_cli)
STATE="$OUT/.stages"
LOGS="$OUT/logs"
mkdir -p "$STATE" "$LOGS"
STAGES=(points propose select export seg seg-top1 figure table)
T_ALL=$(date +%s)

say() { echo "[reproduce $(date +%H:%M:%S)] $*"; }
die() {
    say "ERROR: $1" >&2
    exit "${2:-1}"
}

# later_than NAME: the stages after NAME, in pipeline order
later_than() {
    local seen=0 s
    for s in "${STAGES[@]}"; do
        [[ $seen == 1 ]] && echo "$s"
        [[ $s == "$1" ]] && seen=1
    done
    return 0
}

# available CMD: false when `sapnet CMD` is still the placeholder of a stage that has not landed
available() {
    local help
    help="$("${SAPNET[@]}" "$1" --help 2>&1)" || return 1
    ! grep -qi "not implemented yet" <<<"$help"
}

# cpu_seconds VAR: set VAR to the user + system CPU seconds of this shell's finished children so far
# (`times` must run in this shell, not in a $(...) subshell, to see them)
cpu_seconds() {
    times >"$STATE/.times"
    printf -v "$1" '%s' "$(tail -1 "$STATE/.times" | awk '{ s = 0
        for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] }
        printf "%d", s }')"
}

# run_stage NAME "what it does" OUTPUT_PATH -- COMMAND...
#   SIG_EXTRA: settings that are not on the command line (part of the stage's signature)
#   RESUME_FILE: a file an interrupted run of the command leaves behind; when it exists and the interrupted
#                run had the same signature, `--resume` is added after the subcommand name
run_stage() {
    local name=$1 what=$2 output=$3
    shift 4
    local sig="$*${SIG_EXTRA:+ # $SIG_EXTRA}" marker="$STATE/$name.done" started="$STATE/$name.started"
    if [[ -f $marker && "$(cat "$marker")" == "$sig" ]]; then
        say "stage $name: already done, skipped ($what; delete $marker to redo)"
        return 0
    fi
    if [[ -f $marker ]]; then
        say "stage $name: settings changed since the last run, redoing it (and the stages after it)"
        rm -rf "$output"
    elif [[ -f $started && "$(cat "$started")" != "$sig" ]]; then
        say "stage $name: settings changed since the interrupted run, starting it over"
        rm -rf "$output"
    fi
    local s
    for s in $(later_than "$name"); do rm -f "$STATE/$s.done"; done
    rm -f "$marker"
    if [[ $1 == "${SAPNET[0]}" && $2 == -m && $3 == sapnet_cli ]] && ! available "$4"; then
        die "stage $name not available yet: \`sapnet $4\` has not landed in this checkout" 6
    fi
    if [[ -n "${RESUME_FILE:-}" && -f "$RESUME_FILE" ]]; then
        say "stage $name: resuming the interrupted run ($RESUME_FILE)"
        set -- "${@:1:4}" --resume "${@:5}"
    fi
    say "stage $name: $what"
    echo "  \$ $*"
    echo "$sig" >"$started"
    local t0 c0 c1 rc
    t0=$(date +%s)
    cpu_seconds c0
    set +e
    "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [[ $rc == 6 ]]; then
        die "stage $name not available yet (exit 6; see $LOGS/$name.log)" 6
    elif [[ $rc != 0 ]] && grep -q "No module named 'stages\." "$LOGS/$name.log"; then
        die "stage $name not available yet: $(grep -o "No module named 'stages[^']*'" "$LOGS/$name.log" |
            head -1) (a part that has not landed in this checkout)" 6
    elif [[ $rc != 0 ]]; then
        die "stage $name failed with exit code $rc; see $LOGS/$name.log. Rerun to resume." "$rc"
    fi
    echo "$sig" >"$marker"
    rm -f "$started"
    cpu_seconds c1
    echo "$(($(date +%s) - t0))" >"$STATE/$name.seconds"
    say "stage $name: done in $(($(date +%s) - t0)) s (CPU time $((c1 - c0)) s)"
}

say "sapnet reproduce -> $OUT (python: $PY, device: $DEVICE, FULL=$FULL)"

# ---------------------------------------------------------------- points
POINTS="$EX/train/points.json"
if [[ "${RESAMPLE_POINTS:-0}" == 1 ]]; then
    POINTS="$OUT/points/train.json"
    run_stage points "sample one point per object (seed 0)" "$OUT/points" -- \
        "${SAPNET[@]}" points --annotations "$EX/train/annotations.json" --out "$POINTS" --seed 0
else
    say "stage points: using $POINTS (made by \`sapnet points --seed 0\`; RESAMPLE_POINTS=1 to redo)"
fi

# ---------------------------------------------------------------- propose
if [[ -n "${PROPOSE_BACKEND:-}" ]]; then
    PROPOSE_ARGS=(--backend "$PROPOSE_BACKEND")
elif [[ -n "${SAPNET_SAM_CHECKPOINT:-}" ]]; then
    ckpt_name="$(basename "$SAPNET_SAM_CHECKPOINT")"
    case "${SAM_MODEL:-$ckpt_name}" in
        *vit_t* | *mobile*) PROPOSE_ARGS=(--backend mobile-sam --model vit_t) ;;
        *vit_b*) PROPOSE_ARGS=(--backend sam --model vit_b) ;;
        *vit_l*) PROPOSE_ARGS=(--backend sam --model vit_l) ;;
        *) PROPOSE_ARGS=(--backend sam --model vit_h) ;;
    esac
    PROPOSE_ARGS+=(--checkpoint "$SAPNET_SAM_CHECKPOINT")
else
    PROPOSE_ARGS=(--backend classical)
fi
STORE="$OUT/store.zarr"
run_stage propose "6 mask proposals per point (${PROPOSE_ARGS[*]:0:2})" "$STORE" -- \
    "${SAPNET[@]}" propose --annotations "$POINTS" --images "$EX/images" --store "$STORE" \
    "${PROPOSE_ARGS[@]}" --proposals-per-point 6 --device "$DEVICE"

# ---------------------------------------------------------------- select
SELECT_DIR="$OUT/select"
# settings without a command-line option: a short LR warm-up (the reference 500 iterations would cover the
# whole short run) and a mid-run checkpoint so that an interrupted run resumes
SELECT_CFG="$OUT/select-config.yaml"
printf 'warmup_iters: %d\ncheckpoint_interval: %d\n' "$SELECT_WARMUP" "$(((SELECT_ITERS + 1) / 2))" \
    >"$SELECT_CFG"
SIG_EXTRA="$(tr '\n' ' ' <"$SELECT_CFG")"
RESUME_FILE="$SELECT_DIR/checkpoints/last.pt"
run_stage select "train the MIL proposal selector ($SELECT_BACKBONE, weights $SELECT_WEIGHTS, $SELECT_ITERS iterations)" \
    "$SELECT_DIR" -- \
    "${SAPNET[@]}" select --store "$STORE" --images "$EX/images" --out "$SELECT_DIR" \
    --config "$SELECT_CFG" --backbone "$SELECT_BACKBONE" --weights "$SELECT_WEIGHTS" --iters "$SELECT_ITERS" \
    --batch-size "$SELECT_BATCH" --short-side "$SELECT_SHORT" --max-size "$SELECT_MAX" \
    --device "$DEVICE"
SIG_EXTRA="" RESUME_FILE=""

# ---------------------------------------------------------------- export-pseudo + report
# sapnet and psm keep off proposals holding another annotated point (--point-constraint, the default);
# point-aware is the training-free choice from the other points (docs/method.md)
SELECTORS=top1,largest,psm,sapnet,point-aware,oracle
PSEUDO="$OUT/pseudo/pseudo.json"
REPORT_DIR="$OUT/pseudo/report"
run_stage export "pseudo labels of every selector + quality report against the train GT" "$OUT/pseudo" -- \
    "${SAPNET[@]}" export-pseudo --store "$STORE" --selections "$SELECT_DIR" --out "$PSEUDO" \
    --selector "$SELECTORS" --gt "$EX/train/annotations.json" --report "$REPORT_DIR" --images "$EX/images"

# pseudo-label file of one selector (the first listed writes --out, the others OUT.<selector>.json)
pseudo_file() {
    "$PY" -c "import sys; from pathlib import Path; from stages.export.config import output_paths; \
print(output_paths(Path(sys.argv[1]), sys.argv[2].split(','))[sys.argv[3]])" "$PSEUDO" "$SELECTORS" "$1"
}

# ---------------------------------------------------------------- train-seg
seg_stage() { # NAME SELECTOR
    local name=$1 sel=$2 dir="$OUT/seg_$2" train
    train="$(pseudo_file "$sel")"
    # an interrupted run continues from its last checkpoint (train-seg --resume)
    RESUME_FILE="$dir/last_checkpoint" run_stage "$name" "SOLOv2 ($SEG_BACKBONE, $SEG_ITERS iterations) on the $sel pseudo labels, eval on val" \
        "$dir" -- \
        "${SAPNET[@]}" train-seg --train "$train" --images "$EX/images" --out "$dir" \
        --val "$EX/val/annotations.json" --val-images "$EX/images" --backbone "$SEG_BACKBONE" \
        --iters "$SEG_ITERS" --ims-per-batch "$SEG_BATCH" --min-size "$SEG_MIN" --max-size "$SEG_MAX" \
        --device "$DEVICE" \
        --opts "SOLVER.WARMUP_ITERS=$SEG_WARMUP" "SOLVER.CHECKPOINT_PERIOD=$(((SEG_ITERS + 1) / 2))" "SEED=$SEG_SEED"
}
seg_stage seg sapnet
SEG_ARGS=(--seg "sapnet=$OUT/seg_sapnet")
if [[ "$FULL" == 1 ]]; then
    seg_stage seg-top1 top1
    SEG_ARGS+=(--seg "top1=$OUT/seg_top1")
fi

# ---------------------------------------------------------------- figure (FIGURE=1, `make figure`)
if [[ "${FIGURE:-0}" == 1 ]]; then
    FIG_DIR="$OUT/figure"
    run_stage figure "overlays of the training images (top1, psm, sapnet, point-aware)" "$FIG_DIR" -- \
        "${SAPNET[@]}" export-pseudo --store "$STORE" --selections "$SELECT_DIR" \
        --out "$FIG_DIR/pseudo.json" --selector top1,psm,sapnet,point-aware \
        --gt "$EX/train/annotations.json" \
        --viz "$FIG_DIR/viz" --viz-count 20 --images "$EX/images"
    # one grid, scaled to 1200 px wide and palette-quantised so that it stays small enough to commit
    # FIGURE_IMAGE: the image shown (default: a baseball scene, 13 people), else the first grid drawn
    "$PY" - "$FIG_DIR/viz" docs/figures/selectors-grid.png "${FIGURE_IMAGE:-000000000544}" <<'PYEOF'
import sys
from pathlib import Path

from PIL import Image

grids = sorted(Path(sys.argv[1]).glob("*.grid.png"))
if not grids:
    sys.exit(f"no *.grid.png in {sys.argv[1]}")
grids.sort(key=lambda p: not p.name.startswith(sys.argv[3] + "."))
img = Image.open(grids[0]).convert("RGB")
if img.width > 1200:
    img = img.resize((1200, round(img.height * 1200 / img.width)), Image.LANCZOS)
out = Path(sys.argv[2])
out.parent.mkdir(parents=True, exist_ok=True)
img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
kb = out.stat().st_size / 1024
verdict = "small enough to commit" if kb < 300 else "too large to commit (>= 300 KB)"
print(f"figure: {grids[0].name} -> {out} ({img.width}x{img.height}, {kb:.0f} KB, {verdict})")
PYEOF
    # a screenshot of report.html (headless Chromium, `make browser`) -> docs/figures/report-html.png
    CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
    if [[ -n "$CHROMIUM" && -f "$REPORT_DIR/report.html" ]]; then
        shot="$FIG_DIR/report-html.png"
        profile="$(mktemp -d)"
        "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-background-networking \
            --disable-component-update --disable-sync --no-first-run --user-data-dir="$profile" \
            --hide-scrollbars --window-size=1280,1500 --virtual-time-budget=5000 \
            --screenshot="$PWD/$shot" "file://$(realpath "$REPORT_DIR/report.html")" >/dev/null 2>&1 || true
        rm -rf "$profile"
        if [[ -f "$shot" ]]; then
            "$PY" - "$shot" docs/figures/report-html.png <<'PYEOF'
import sys
from pathlib import Path

from PIL import Image

img = Image.open(sys.argv[1]).convert("RGB")
img = img.resize((960, round(img.height * 960 / img.width)), Image.LANCZOS)
out = Path(sys.argv[2])
img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
kb = out.stat().st_size / 1024
verdict = "small enough to commit" if kb < 300 else "too large to commit (>= 300 KB)"
print(f"figure: report.html screenshot -> {out} ({img.width}x{img.height}, {kb:.0f} KB, {verdict})")
PYEOF
        fi
    else
        say "no chromium (make browser) or no report.html: report screenshot skipped"
    fi
fi

# ---------------------------------------------------------------- table
if [[ -f "$REPORT_DIR/report.html" ]]; then
    say "report.html: $REPORT_DIR/report.html ($(du -sh "$REPORT_DIR" | cut -f1) with its thumbnails; open it in a browser)"
fi
times=""
for s in "${STAGES[@]}"; do
    [[ -f "$STATE/$s.seconds" ]] && times+="$s $(cat "$STATE/$s.seconds") s, "
done
say "all stages done in $(($(date +%s) - T_ALL)) s this run (stage times when last run: ${times%, })"
echo
"$PY" scripts/report_table.py --pseudo-report "$REPORT_DIR/report.json" "${SEG_ARGS[@]}" \
    --out "$OUT/table" \
    --context "examples/coco-mini: 20 train images (pseudo labels), 8 val images (SOLOv2); proposals: ${PROPOSE_ARGS[*]:0:2}; selector $SELECT_BACKBONE, weights $SELECT_WEIGHTS, $SELECT_ITERS it; SOLOv2 $SEG_BACKBONE x $SEG_ITERS it, min size $SEG_MIN."
