"""Build ``examples/coco-mini``: a small, redistributable COCO subset for `make reproduce`.

    .venv/bin/python scripts/make_coco_mini.py                       # from ../shared/data/coco-dev
    .venv/bin/python scripts/make_coco_mini.py --src DIR --out examples/coco-mini

Selection (deterministic, no randomness):

1. only images whose Flickr licence allows redistribution of unmodified copies (Attribution,
   Attribution-ShareAlike, No known copyright restrictions, United States Government Work);
2. only "crowded same-class" scenes: at least two non-crowd instances of one class, and at most
   ``--max-instances`` non-crowd instances in all (keeps the CPU pipeline within its time budget);
3. ranked: scenes with at least three instances of their most frequent class first; within that, scenes
   whose most frequent class is a person, vehicle or animal first, then by that class's instance count
   (descending), then by image id; taken in that order while the image bytes stay under
   ``--max-bytes``, until ``--num-images`` are chosen;
4. split by rank: ranks ``r % 7 in (3, 6)`` go to ``val`` (8 of 28), the rest to ``train``, so both parts
   span the same range of crowdedness.

Writes ``images/`` (byte-identical copies), ``train/`` and ``val/`` each with ``annotations.json`` (the original
COCO ground truth of those images, masks included, all 80 categories) and ``points.json`` (`sapnet points`,
seed 0, the default sampler), and ``PROVENANCE.md`` (licences, per-image Flickr licence and URL).
The project never reads the source folder at run time; this script is only run to (re)build the example.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REDISTRIBUTABLE = (
    "Attribution License",
    "Attribution-ShareAlike License",
    "No known copyright restrictions",
    "United States Government Work",
)
FOCUS_SUPERCATEGORIES = ("person", "vehicle", "animal")
VAL_RANKS_MOD7 = (3, 6)


def _rel(path: Path) -> str:
    """``path`` relative to the repository root when inside it (keeps absolute paths out of outputs)."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def rank_images(coco: dict[str, Any], max_instances: int) -> list[dict[str, Any]]:
    """Eligible images (rules 1-2 of the module docstring) in selection order (rule 3).

    Returns one dict per image: ``image`` (the COCO image entry), ``licence`` (name), ``top_class``,
    ``top_count``, ``num_instances`` (non-crowd), ``focus`` (top class is a person/vehicle/animal).
    """
    licences = {lic["id"]: lic for lic in coco["licenses"]}
    cats = {c["id"]: c for c in coco["categories"]}
    per_image: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]][ann["category_id"]] += 1
    ranked = []
    for img in coco["images"]:
        lic = licences.get(img.get("license"), {})
        counts = per_image.get(img["id"], collections.Counter())
        n = sum(counts.values())
        if lic.get("name") not in REDISTRIBUTABLE or not counts or n > max_instances:
            continue
        # most frequent class; ties broken by the smaller category id (deterministic)
        top_cat, top_count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if top_count < 2:
            continue
        ranked.append(
            {
                "image": img,
                "licence": lic["name"],
                "licence_url": lic.get("url", ""),
                "top_class": cats[top_cat]["name"],
                "top_count": top_count,
                "num_instances": n,
                "focus": cats[top_cat].get("supercategory") in FOCUS_SUPERCATEGORIES,
            }
        )
    ranked.sort(
        key=lambda r: (r["top_count"] < 3, not r["focus"], -r["top_count"], r["image"]["id"])
    )
    return ranked


def choose(
    ranked: list[dict[str, Any]], src_images: Path, num_images: int, max_bytes: int
) -> list[dict[str, Any]]:
    """Take ranked images in order while the total image size stays within ``max_bytes``."""
    chosen, total = [], 0
    for r in ranked:
        size = (src_images / r["image"]["file_name"]).stat().st_size
        if total + size > max_bytes:
            continue
        r["bytes"] = size
        chosen.append(r)
        total += size
        if len(chosen) == num_images:
            break
    return chosen


def subset(coco: dict[str, Any], image_ids: set[int], part: str) -> dict[str, Any]:
    """The COCO document restricted to ``image_ids`` (all categories and licences kept)."""
    info = dict(coco.get("info") or {})
    info["description"] = (
        f"sapnet examples/coco-mini ({part}): {len(image_ids)} images of COCO 2017 train2017 with their "
        "original instance annotations; see PROVENANCE.md"
    )
    return {
        "info": info,
        "licenses": coco["licenses"],
        "categories": coco["categories"],
        "images": [img for img in coco["images"] if img["id"] in image_ids],
        "annotations": [a for a in coco["annotations"] if a["image_id"] in image_ids],
    }


def write_provenance(
    out: Path, parts: dict[str, list[dict[str, Any]]], src: Path, argv: list[str]
) -> None:
    """``PROVENANCE.md``: licences, how the images were chosen, one row per image."""
    n_img = sum(len(v) for v in parts.values())
    n_inst = sum(r["num_instances"] for v in parts.values() for r in v)
    size = sum(r["bytes"] for v in parts.values() for r in v)
    lines = [
        "# examples/coco-mini: provenance and licences",
        "",
        f"{n_img} photos of COCO 2017 **train2017** ({', '.join(f'{k} {len(v)}' for k, v in parts.items())}), "
        f"{n_inst} non-crowd instances, {size / 1e6:.1f} MB of images, with their original COCO instance "
        "annotations (all 80 categories listed).",
        "",
        "## Licences",
        "",
        "- **Annotations** (`*/annotations.json`, and the ground truth inside `*/points.json`): "
        "© COCO Consortium, [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/). "
        "The `point` fields were added by `sapnet points --seed 0`.",
        "- **Images** (`images/`): each photo belongs to its Flickr author and is used under the licence "
        "listed below (the COCO `license` field of the image). Only images whose licence allows "
        "redistribution were taken: "
        + ", ".join(REDISTRIBUTABLE)
        + ". The files are byte-identical "
        "to the COCO originals (not resized or re-encoded). Attribution: the Flickr page of each photo "
        "(its `flickr_url` in the annotations) names the author.",
        "- The COCO Terms of Use apply to the dataset as a whole: https://cocodataset.org/#termsofuse",
        "",
        "## How the images were chosen",
        "",
        "By `scripts/make_coco_mini.py` (deterministic; see its docstring), from the project's dev split of "
        "COCO 2017 (`coco-dev`, itself taken from public COCO subsets; each image keeps its "
        "`source_repo`/`source_commit`/`source_path` fields):",
        "",
        "1. licence allows redistribution (above);",
        "2. at least two non-crowd instances of one class (crowded same-class scenes, where point-prompted "
        "segmentation is hard), and not too many instances in all;",
        "3. scenes with >= 3 instances of one class first, among them scenes dominated by people, "
        "vehicles or animals first, then by how many instances the most frequent class has; images "
        "taken in that order under a size cap;",
        "4. ranks r with r % 7 in {3, 6} form `val`, the others `train`.",
        "",
        f"Command: `{' '.join(argv)}` (source: `{_rel(src)}`).",
        "",
        "## Images",
        "",
        "| split | file | instances | most frequent class | licence | Flickr URL | sha256 (first 12) |",
        "|---|---|---:|---|---|---|---|",
    ]
    for part, rows in parts.items():
        for r in rows:
            img = r["image"]
            lines.append(
                f"| {part} | {img['file_name']} | {r['num_instances']} | {r['top_class']} x{r['top_count']}"
                f" | [{r['licence']}]({r['licence_url']}) | {img.get('flickr_url', '')} "
                f"| {r['sha256'][:12]} |"
            )
    (out / "PROVENANCE.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(
    src: Path, out: Path, num_images: int, max_bytes: int, max_instances: int, argv: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Select, copy and write everything; returns ``{"train": rows, "val": rows}``."""
    from stages.points.run import PointsConfig, run_points

    coco = json.loads((src / "annotations.json").read_text(encoding="utf-8"))
    ranked = rank_images(coco, max_instances)
    chosen = choose(ranked, src / "images", num_images, max_bytes)
    if len(chosen) < num_images:
        raise SystemExit(
            f"only {len(chosen)} eligible images fit; relax --max-bytes/--max-instances"
        )
    parts: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for rank, r in enumerate(chosen):
        parts["val" if rank % 7 in VAL_RANKS_MOD7 else "train"].append(r)

    (out / "images").mkdir(parents=True, exist_ok=True)
    for old in (out / "images").iterdir():  # a rebuild leaves exactly the chosen images
        old.unlink()
    for r in chosen:
        name = r["image"]["file_name"]
        shutil.copyfile(src / "images" / name, out / "images" / name)
        r["sha256"] = hashlib.sha256((out / "images" / name).read_bytes()).hexdigest()
    for part, rows in parts.items():
        ids = {r["image"]["id"] for r in rows}
        part_dir = out / part
        part_dir.mkdir(parents=True, exist_ok=True)
        ann_path = part_dir / "annotations.json"
        ann_path.write_text(
            json.dumps(subset(coco, ids, part), separators=(",", ":")) + "\n", encoding="utf-8"
        )
        # relative paths keep the machine's directory layout out of the written files
        run_points(
            PointsConfig(
                Path(_rel(ann_path)), Path(_rel(part_dir / "points.json")), seed=0, progress=False
            )
        )
    write_provenance(out, parts, src, argv)
    return parts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "coco-dev")
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "coco-mini")
    ap.add_argument("--num-images", type=int, default=28)
    ap.add_argument("--max-bytes", type=int, default=5_500_000, help="cap on the image bytes")
    ap.add_argument(
        "--max-instances", type=int, default=20, help="most non-crowd instances per image"
    )
    args = ap.parse_args(argv)
    import os

    os.chdir(REPO)  # points.json records its source path relative to the repository
    parts = build(
        args.src.resolve(),
        args.out.resolve(),
        args.num_images,
        args.max_bytes,
        args.max_instances,
        ["scripts/make_coco_mini.py", *(argv if argv is not None else sys.argv[1:])],
    )
    for part, rows in parts.items():
        n = sum(r["num_instances"] for r in rows)
        print(f"{part}: {len(rows)} images, {n} instances")


if __name__ == "__main__":
    main()
