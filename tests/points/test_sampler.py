import json

import numpy as np
import pytest

from sapnet_cli.app import main
from stages.common.masks import segmentation_to_mask
from stages.points.run import PointsConfig, run_points, sample_points
from stages.points.sampler import object_rng, sample_point_in_mask


def _inside(mask: np.ndarray, x: float, y: float) -> bool:
    return bool(mask[int(np.floor(y + 0.5)), int(np.floor(x + 0.5))])


@pytest.mark.parametrize("mode", ["center-gaussian", "uniform", "center"])
def test_points_inside_masks_and_deterministic(coco4, mode):
    coco = json.loads(coco4["gt"].read_text())
    first = sample_points(coco, mode=mode, seed=3)
    second = sample_points(coco, mode=mode, seed=3)
    assert first == second
    images = {im["id"]: im for im in coco["images"]}
    non_crowd = [a for a in coco["annotations"] if not a["iscrowd"]]
    assert set(first) == {a["id"] for a in non_crowd}
    for ann in non_crowd:
        im = images[ann["image_id"]]
        mask = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        assert _inside(mask, *first[ann["id"]]), (mode, ann["id"])


def test_seed_changes_points_and_order_does_not(coco4):
    coco = json.loads(coco4["gt"].read_text())
    a = sample_points(coco, seed=0)
    b = sample_points(coco, seed=1)
    assert a != b
    coco["annotations"] = coco["annotations"][::-1]
    assert sample_points(coco, seed=0) == a


def test_center_gaussian_prefers_the_centre():
    mask = np.zeros((200, 200), bool)
    mask[20:180, 20:180] = True
    pts = np.array(
        [sample_point_in_mask(mask, "center-gaussian", object_rng(0, i)) for i in range(200)]
    )
    # The central ellipse has semi-axes 0.125 * 160 = 20 px around the centre (99.5, 99.5).
    dist = np.hypot(pts[:, 0] - 99.5, pts[:, 1] - 99.5)
    assert dist.max() <= 21.5
    uni = np.array([sample_point_in_mask(mask, "uniform", object_rng(0, i)) for i in range(200)])
    assert np.hypot(uni[:, 0] - 99.5, uni[:, 1] - 99.5).mean() > dist.mean() * 2


def test_center_mode_on_a_ring_stays_on_the_mask():
    yy, xx = np.mgrid[0:50, 0:50]
    r = np.hypot(xx - 25, yy - 25)
    ring = (r > 15) & (r < 20)  # centre of mass (25, 25) is not on the mask
    x, y = sample_point_in_mask(ring, "center", object_rng(0, 0))
    assert _inside(ring, x, y)


def test_empty_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        sample_point_in_mask(np.zeros((5, 5), bool), "uniform", object_rng(0, 0))


def test_run_points_writes_points_and_keeps_crowd_unprompted(coco4):
    out = coco4["root"] / "pts.json"
    result = run_points(PointsConfig(coco4["gt"], out, seed=0, progress=False))
    doc = json.loads(out.read_text())
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == result.num_crowd == 1
    assert all("point" not in a for a in crowd)
    assert sum("point" in a for a in doc["annotations"]) == result.num_points == 44
    assert doc["info"]["sapnet_points"]["mode"] == "center-gaussian"
    assert (coco4["root"] / "pts.config.yaml").is_file()


def test_run_points_empty_mask_fails_or_skips(coco4):
    doc = json.loads(coco4["gt"].read_text())
    victim = next(a for a in doc["annotations"] if not a["iscrowd"])
    victim["segmentation"] = [[1, 1, 1, 1, 1, 1]]  # degenerate polygon: empty mask
    coco4["gt"].write_text(json.dumps(doc))
    out = coco4["root"] / "pts.json"
    code = _run(["points", "--annotations", str(coco4["gt"]), "--out", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    code = _run(
        [
            "points",
            "--annotations",
            str(coco4["gt"]),
            "--out",
            str(out),
            "--on-error",
            "skip",
            "--no-progress",
        ]
    )
    assert code == 0
    written = json.loads(out.read_text())
    assert victim["id"] not in {a["id"] for a in written["annotations"]}
    assert written["info"]["sapnet_points"]["problems"][0]["ann_id"] == victim["id"]


def test_points_cli_rejects_bad_mode_and_bad_json(coco4, capsys):
    out = coco4["root"] / "p.json"
    assert (
        _run(["points", "--annotations", str(coco4["gt"]), "--out", str(out), "--mode", "x"]) == 2
    )
    bad = coco4["root"] / "bad.json"
    bad.write_text("{not json")
    assert _run(["points", "--annotations", str(bad), "--out", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)
