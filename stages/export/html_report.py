"""`report.html`: one self-contained page to look at pseudo labels (no server, no network).

The page holds the quality table per selector with small SVG charts, and a sortable/filterable gallery of images
(every selector's masks side by side, GT outlines, points, class names); per object, its M proposals with the
chosen one framed and each selector's pick named. CSS and JS are inlined; the thumbnails are JPEGs in
``report_files/`` next to the page, linked relatively and loaded lazily, so the page stays light for thousands of
images. Without ground truth, everything that needs it (IoU, errors, the quality table) is left out.

Layout of the output folder::

    report.html
    report_files/img/<image row>.<selector>.jpg   one overlay per image and selector (longest side 320 px)
    report_files/obj/<annotation id>.jpg          the object's M proposals side by side (96 px tiles)
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from stages.common.io import atomic_write_bytes, read_image_rgb
from stages.export.agreement import pick_disagreement
from stages.export.config import ErrorThresholds
from stages.export.gt import GroundTruth, image_groups, proposal_gt_iou, xywh_to_xyxy
from stages.export.html_charts import bar_chart, histogram
from stages.export.html_thumbs import (
    crop_box,
    image_overlay_thumb,
    proposal_strip,
    save_jpeg,
    shrink_photo,
    thumb_scale,
)
from stages.export.report import (
    AP_KEYS,
    SIZE_NAMES,
    PredSet,
    classify_errors,
    object_overlaps,
    report_value,
)

log = logging.getLogger(__name__)

ASSETS = Path(__file__).with_name("html_assets")
FILES_DIR = "report_files"


@dataclass
class GalleryInputs:
    """What the gallery shows: P objects on the images, the masks each selector picked, optional extras.

    Attributes:
        images: image records ``{"id", "file_name", "height", "width"}``.
        categories: ``{category id: name}``.
        image_index: ``(P,)`` row of each object's image in ``images``.
        ann_id, category_id: ``(P,)``. xy: ``(P, 2)`` points ``[x, y]`` or None.
        picks: ``{selector: P compressed RLE dicts}`` (the exported masks), in column order.
        scores: ``{selector: (P,)}`` the pseudo labels' ``score`` (the selector's confidence).
        primary: the selector whose pick is framed in the proposal strips (and sorted by default).
        proposals: ``(P, M)`` RLE counts strings of every proposal, or None (no store: no strips).
        proposal_index: ``{selector: (P,)}`` chosen proposal per selector (with ``proposals``).
        proposal_scores: ``{name: (P, M)}`` per-proposal numbers shown under the strips (backend, PSM...).
        gt, gt_rows: the ground truth and each object's GT row (matched by id), or None (no-GT mode).
        images_dir: folder of the image files; None draws on a grey canvas.
        agree_selectors: selectors counted in the disagreement (default: all but ``oracle``).
    """

    images: list[dict[str, Any]]
    categories: dict[int, str]
    image_index: np.ndarray
    ann_id: np.ndarray
    category_id: np.ndarray
    xy: np.ndarray | None
    picks: dict[str, list[dict[str, Any]]]
    scores: dict[str, np.ndarray]
    primary: str
    proposals: np.ndarray | None = None
    proposal_index: dict[str, np.ndarray] | None = None
    proposal_scores: dict[str, np.ndarray] = field(default_factory=dict)
    gt: GroundTruth | None = None
    gt_rows: np.ndarray | None = None
    images_dir: Path | None = None
    agree_selectors: tuple[str, ...] | None = None


@dataclass
class HtmlReport:
    """Where the page went and how big it is (page + thumbnails, bytes)."""

    path: Path
    page_bytes: int
    files_bytes: int
    num_files: int

    @property
    def total_bytes(self) -> int:
        return self.page_bytes + self.files_bytes

    def describe(self) -> str:
        mb = self.total_bytes / 1e6
        return (
            f"{self.path} ({self.page_bytes / 1e6:.2f} MB page + {self.num_files} thumbnails "
            f"{self.files_bytes / 1e6:.2f} MB = {mb:.2f} MB)"
        )


# --------------------------------------------------------------------------- per-object numbers
def _round(values: np.ndarray, digits: int = 3) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values).tolist()]


def gt_object_metrics(
    inp: GalleryInputs, thr: ErrorThresholds
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{selector: (iou (P,), error (P,) str: "group", "local" or "")}`` against the GT."""
    assert inp.gt is not None and inp.gt_rows is not None
    image_id = np.array([inp.images[i]["id"] for i in inp.image_index.tolist()], np.int64)
    out = {}
    for name, rles in inp.picks.items():
        preds = PredSet(
            name=name,
            image_id=image_id,
            category_id=inp.category_id,
            score=inp.scores[name],
            box=np.zeros((len(rles), 4)),
            rles=rles,
        )
        iou, inside, cover = object_overlaps(preds, inp.gt, inp.gt_rows)
        group, local = classify_errors(iou, inside, cover, thr)
        err = np.where(group, "group", np.where(local, "local", ""))
        out[name] = (iou, err)
    return out


def build_data(inp: GalleryInputs, thr: ErrorThresholds, thumbs: dict[str, Any]) -> dict[str, Any]:
    """The JSON document the page's script reads (numbers rounded to 3 digits).

    Args:
        thumbs: ``{"img": {(image row, selector): relative path}, "obj": {row: relative path}}``.
    """
    p = len(inp.ann_id)
    names = list(inp.picks)
    has_gt = inp.gt is not None and inp.gt_rows is not None
    metrics = gt_object_metrics(inp, thr) if has_gt else {}
    agree = inp.agree_selectors or tuple(n for n in names if n != "oracle")
    dis = pick_disagreement({n: inp.picks[n] for n in agree if n in inp.picks}, inp.image_index)
    prop_iou = None
    if has_gt and inp.proposals is not None:
        hw = np.array([(inp.images[i]["height"], inp.images[i]["width"]) for i in inp.image_index])
        prop_iou = proposal_gt_iou(
            inp.proposals, hw[:, 0], hw[:, 1], inp.image_index, inp.gt_rows, inp.gt
        )
    objects = []
    for r in range(p):
        o: dict[str, Any] = {
            "id": int(inp.ann_id[r]),
            "im": int(inp.image_index[r]),
            "cat": int(inp.category_id[r]),
            "dis": round(float(dis[r]), 3),
            "score": {n: round(float(inp.scores[n][r]), 3) for n in names},
        }
        if inp.xy is not None:
            o["xy"] = _round(inp.xy[r], 1)
        if has_gt:
            o["iou"] = {n: round(float(metrics[n][0][r]), 3) for n in names}
            o["err"] = {n: str(metrics[n][1][r]) for n in names}
        if inp.proposal_index is not None:
            o["pick"] = {n: int(v[r]) for n, v in inp.proposal_index.items()}
            prop = {k: _round(v[r]) for k, v in inp.proposal_scores.items()}
            if prop_iou is not None:
                prop["GT IoU"] = _round(prop_iou[r])
            o["prop"] = prop
        if r in thumbs["obj"]:
            o["strip"] = thumbs["obj"][r]
        objects.append(o)
    images = []
    rows_of = dict(image_groups(inp.image_index))
    for i, im in enumerate(inp.images):
        rows = rows_of.get(i, np.zeros(0, np.int64))
        entry: dict[str, Any] = {
            "i": i,
            "id": int(im["id"]),
            "file": str(im["file_name"]),
            "w": int(im["width"]),
            "h": int(im["height"]),
            "n": len(rows),
            "cats": sorted({int(c) for c in inp.category_id[rows].tolist()}),
            "objs": [int(r) for r in rows.tolist()],
            "dis": round(float(dis[rows].mean()), 3) if len(rows) else 0.0,
            "thumbs": {n: thumbs["img"][(i, n)] for n in names if (i, n) in thumbs["img"]},
            "stats": {},
        }
        for n in names:
            st: dict[str, Any] = {
                "conf": round(float(inp.scores[n][rows].min()), 3) if len(rows) else None
            }
            if has_gt:
                iou, err = metrics[n]
                st["miou"] = round(float(iou[rows].mean()), 3) if len(rows) else None
                st["g"] = int((err[rows] == "group").sum())
                st["l"] = int((err[rows] == "local").sum())
            entry["stats"][n] = st
        images.append(entry)
    return {
        "selectors": names,
        "primary": inp.primary,
        "hasGT": has_gt,
        "M": int(inp.proposals.shape[1]) if inp.proposals is not None else 0,
        "categories": {str(k): v for k, v in inp.categories.items()},
        "images": images,
        "objects": objects,
    }


# --------------------------------------------------------------------------- thumbnails
def write_thumbnails(inp: GalleryInputs, out_dir: Path) -> tuple[dict[str, Any], int, int]:
    """Draw every image's overlays and every object's proposal strip into ``out_dir/report_files``.

    Returns ``(paths relative to out_dir as in build_data's ``thumbs``, total bytes, file count)``.
    """
    img_paths: dict[tuple[int, str], str] = {}
    obj_paths: dict[int, str] = {}
    total = count = 0
    rows_of = dict(image_groups(inp.image_index))
    gt = inp.gt
    for i, im in enumerate(inp.images):
        rows = rows_of.get(i)
        if rows is None:
            continue
        h, w = int(im["height"]), int(im["width"])
        photo = _photo(inp.images_dir, im)
        scale = thumb_scale(h, w)
        th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        small = shrink_photo(photo, th, tw)
        gt_masks = own_gt = None
        if gt is not None and inp.gt_rows is not None:
            g = gt.rows_by_image[int(im["id"])]
            g = g[~gt.iscrowd[g]]
            if len(g):
                gt_masks = mask_utils.decode([gt.rles[k] for k in g]).transpose(2, 0, 1) > 0
            own_gt = {int(r): gt.rles[int(inp.gt_rows[r])] for r in rows}
        labels = [inp.categories.get(int(c), str(c)) for c in inp.category_id[rows].tolist()]
        points = inp.xy[rows] if inp.xy is not None else None
        decoded = {}
        for name, rles in inp.picks.items():
            sel = [rles[r] for r in rows]
            masks = mask_utils.decode(sel).transpose(2, 0, 1) > 0
            decoded[name] = masks
            boxes = xywh_to_xyxy(np.asarray(mask_utils.toBbox(sel)))
            tile = image_overlay_thumb(small, masks, boxes, points, labels, gt_masks, scale)
            rel = f"{FILES_DIR}/img/{i}.{_safe(name)}.jpg"
            total += save_jpeg(out_dir / rel, tile)
            count += 1
            img_paths[(i, name)] = rel
        if inp.proposals is None:
            continue
        for r in rows.tolist():
            props = [{"size": [h, w], "counts": str(c)} for c in inp.proposals[r]]
            pmasks = mask_utils.decode(props).transpose(2, 0, 1) > 0
            pick_boxes = xywh_to_xyxy(
                np.asarray(mask_utils.toBbox([inp.picks[n][r] for n in inp.picks]))
            )
            gmask = None
            if own_gt is not None:
                gmask = mask_utils.decode(own_gt[r]) > 0
                pick_boxes = np.vstack([pick_boxes, gt.box[int(inp.gt_rows[r])]])
            point = inp.xy[r] if inp.xy is not None else None
            crop = crop_box(pick_boxes, point, h, w)
            picked = None
            if inp.proposal_index is not None and inp.primary in inp.proposal_index:
                picked = int(inp.proposal_index[inp.primary][r])
            strip = proposal_strip(photo, pmasks, crop, picked, point, gmask)
            rel = f"{FILES_DIR}/obj/{int(inp.ann_id[r])}.jpg"
            total += save_jpeg(out_dir / rel, strip)
            count += 1
            obj_paths[r] = rel
    return {"img": img_paths, "obj": obj_paths}, total, count


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _photo(images_dir: Path | None, im: dict[str, Any]) -> np.ndarray:
    h, w = int(im["height"]), int(im["width"])
    if images_dir is not None:
        path = Path(images_dir) / str(im["file_name"])
        if path.is_file():
            rgb = read_image_rgb(path)
            if rgb.shape[:2] == (h, w):
                return rgb
            log.warning(
                "image %s is %dx%d, the records say %dx%d: grey canvas",
                path,
                *rgb.shape[1::-1],
                w,
                h,
            )
        else:
            log.warning("image %s not found: grey canvas in the report", path)
    return np.full((h, w, 3), 128, np.uint8)


# --------------------------------------------------------------------------- quality table and charts
def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def quality_rows(report: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``[(label, dotted key, [value per selector])]`` of the quality table (percent, as report.md)."""
    cols = report["selectors"]
    rows: list[tuple[str, str, list[str]]] = []
    for size in ("all", *SIZE_NAMES):
        rows.append(
            (
                f"objects ({size})",
                f"objects.{size}",
                [str(report_value(c, "objects", size) or 0) for c in cols],
            )
        )
    for size in ("all", *SIZE_NAMES):
        key = f"mask_iou.{size}"
        rows.append(
            (f"mask mIoU ({size})", key, [_pct(report_value(c, "mask_iou", size)) for c in cols])
        )
    for size in ("all", *SIZE_NAMES):
        key = f"box_iou.{size}"
        rows.append(
            (f"mIoU_box ({size})", key, [_pct(report_value(c, "box_iou", size)) for c in cols])
        )
    for kind in ("group", "local", "iou_below_0.5"):
        label = "IoU < 0.5 %" if kind == "iou_below_0.5" else f"{kind} errors %"
        rows.append(
            (label, f"errors.{kind}", [_pct(report_value(c, "errors", kind)) for c in cols])
        )
    rows.append(
        (
            "Gap",
            "gap.gap",
            [("n/a" if (g := report_value(c, "gap", "gap")) is None else f"{g:.3f}") for c in cols],
        )
    )
    for iou_type in ("segm", "bbox"):
        for k in AP_KEYS:
            rows.append(
                (
                    f"{iou_type} {k}",
                    f"ap_{iou_type}.{k}",
                    [_pct(report_value(c, f"ap_{iou_type}", k)) for c in cols],
                )
            )
    return rows


def quality_table(report: dict[str, Any]) -> str:
    """The quality table as HTML; every value cell carries ``data-key`` and ``data-selector``."""
    names = [c["name"] for c in report["selectors"]]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for label, key, vals in quality_rows(report):
        cells = "".join(
            f'<td data-key="{key}" data-selector="{html.escape(n)}">{v}</td>'
            for n, v in zip(names, vals, strict=True)
        )
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return (
        '<table id="quality"><thead><tr><th>metric (%)</th>' + head + "</tr></thead><tbody>"
        + "".join(body) + "</tbody></table>"
    )  # fmt: skip


def charts(report: dict[str, Any] | None, data: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(title, inline SVG)]``: mIoU by size and error rates (with GT), confidence per selector."""
    out = []
    if report is not None:
        cols = report["selectors"]
        names = [c["name"] for c in cols]
        by_size = {s: [report_value(c, "mask_iou", s) for c in cols] for s in ("all", *SIZE_NAMES)}
        out.append(("mask mIoU by object size (%)", bar_chart(by_size, names, 100.0)))
        errs = {
            k: [report_value(c, "errors", k) for c in cols]
            for k in ("group", "local", "iou_below_0.5")
        }
        out.append(("errors by type (% of objects)", bar_chart(errs, names, 100.0)))
    for name in data["selectors"]:
        scores = [o["score"][name] for o in data["objects"]]
        out.append((f"confidence of {name}", histogram(np.asarray(scores, np.float64))))
    dis = [o["dis"] for o in data["objects"]]
    out.append(("selector disagreement per object", histogram(np.asarray(dis, np.float64), 0, 1)))
    return out


# --------------------------------------------------------------------------- the page
def render_page(
    data: dict[str, Any], report: dict[str, Any] | None, title: str = "sapnet pseudo labels"
) -> str:
    """The whole HTML document (CSS, JS and data inlined)."""
    css = (ASSETS / "report.css").read_text(encoding="utf-8")
    js = (ASSETS / "report.js").read_text(encoding="utf-8")
    # "</" cannot end the script element early once escaped; JSON stays valid
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    n_img, n_obj = len(data["images"]), len(data["objects"])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>",
        f"<header><h1>{html.escape(title)}</h1><p>{n_img} image(s), {n_obj} object(s); selectors: "
        + ", ".join(html.escape(s) for s in data["selectors"])
        + ("" if data["hasGT"] else " &mdash; <b>no ground truth</b>: IoU and errors not shown")
        + "</p></header>",
    ]
    parts.append('<div class="overview">')
    if report is not None:
        parts.append(
            '<section id="quality-section"><h2>Quality per selector</h2>'
            f'<p class="note">Ground truth <code>{html.escape(str(report["gt"]))}</code>. '
            "IoU, AP and error rates in percent.</p>" + quality_table(report)
        )
        parts.append(
            "<details><summary>definitions</summary><ul>"
            + "".join(f"<li>{html.escape(d)}</li>" for d in report["definitions"])
            + "</ul></details></section>"
        )
    parts.append('<section id="charts"><h2>Charts</h2><div class="charts">')
    for chart_title, svg in charts(report, data):
        parts.append(
            f'<figure class="chart"><figcaption>{html.escape(chart_title)}</figcaption>{svg}</figure>'
        )
    parts.append("</div></section></div>")
    parts.append(
        '<section id="gallery-section"><h2>Gallery</h2><div id="controls"></div>'
        '<p id="count"></p><div id="gallery"></div><button id="more" type="button">show more</button>'
        "</section>"
    )
    parts.append(f'<script id="report-data" type="application/json">{payload}</script>')
    parts.append(f"<script>{js}</script></body></html>")
    return "\n".join(parts)


def write_html_report(
    inp: GalleryInputs,
    out_dir: str | Path,
    report: dict[str, Any] | None = None,
    thresholds: ErrorThresholds | None = None,
) -> HtmlReport:
    """Write ``out_dir/report.html`` and its thumbnails; ``report`` = the quality report (None without GT)."""
    out_dir = Path(out_dir)
    thr = thresholds or ErrorThresholds()
    thumbs, files_bytes, n_files = write_thumbnails(inp, out_dir)
    data = build_data(inp, thr, thumbs)
    page = render_page(data, report).encode("utf-8")
    path = out_dir / "report.html"
    atomic_write_bytes(path, page)
    result = HtmlReport(path, len(page), files_bytes, n_files)
    log.info("report.html: %s", result.describe())
    return result


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (for tests and the CLI)."""
    return sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(path) for f in fs)
