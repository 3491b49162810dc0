"""SISSI's pieces against plain references and hand-made cases: IoU / NMS, weighted boxes
fusion, TTA box mapping, COCO AP / AR, the ADELE start, synthetic-like images, the weak-label
generators, the detector's targets and decoding, and the loaders (with their errors)."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import data_error
from medda_jax.methods.sissi import data as data_lib
from medda_jax.methods.sissi import detector, noisy_labels, paper


def test_iou_matrix_matches_a_plain_loop():
  rng = np.random.default_rng(0)
  a = np.sort(rng.uniform(0, 20, (5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
  b = np.sort(rng.uniform(0, 20, (4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4)[:, [0, 2, 1, 3]]
  want = np.zeros((5, 4))
  for i, p in enumerate(a):
    for j, q in enumerate(b):
      iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
      ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
      inter = iw * ih
      want[i, j] = inter / ((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter)
  np.testing.assert_allclose(paper.iou_matrix(a, b), want, rtol=1e-12)


def test_nms_keeps_the_best_of_overlapping_boxes():
  boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]])
  keep = paper.nms(boxes, np.array([0.5, 0.9, 0.8, 0.1]), 0.2)
  assert keep.tolist() == [1, 2]


def test_weighted_boxes_fusion_on_hand_made_boxes():
  # two models; one cell seen by both, one only by the second model
  boxes = [np.array([[10, 10, 20, 20]]), np.array([[12, 10, 22, 20], [40, 40, 50, 50]])]
  scores = [np.array([0.9]), np.array([0.3, 0.6])]
  fused, s = paper.weighted_boxes_fusion(boxes, scores, iou_thr=0.55)
  assert len(fused) == 2
  # eq. 1: x1 = (0.9 * 10 + 0.3 * 12) / 1.2 = 10.5, x2 = 20.5; score = mean(0.9, 0.3) * 2/2
  np.testing.assert_allclose(fused[0], [10.5, 10, 20.5, 20])
  np.testing.assert_allclose(s[0], 0.6)
  # seen by one model of two: score rescaled by 1/2
  np.testing.assert_allclose(fused[1], [40, 40, 50, 50])
  np.testing.assert_allclose(s[1], 0.3)
  # below the IoU threshold the boxes stay apart
  apart, _ = paper.weighted_boxes_fusion(boxes, scores, iou_thr=0.7)
  assert len(apart) == 3


def test_tta_flips_map_boxes_back_to_the_original_geometry():
  image = np.zeros((32, 48, 3), np.uint8)
  image[5:12, 30:44] = 255
  box = np.array([[30, 5, 44, 12]], np.float64)
  for flip in ("none", "h", "v", "hv"):
    flipped = paper.flip_image(image, flip)
    ys, xs = np.nonzero(flipped[..., 0])
    seen = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
    np.testing.assert_array_equal(paper.unflip_boxes(seen, flip, 48, 32), box)
  assert paper.scaled_size(512, 0.8, 32) == 416 and paper.scaled_size(64, 1.5, 32) == 96


def test_coco_metrics_on_hand_made_cases():
  gt = [np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [20, 20, 30, 30]])]
  perfect = [(g, np.ones(len(g))) for g in gt]
  assert paper.coco_metrics(perfect, gt) == {"AP": 100.0, "AP50": 100.0, "AP75": 100.0,
                                             "AR": 100.0}
  # a false positive ranked above the only true positive: precision 1/2 at recall 1
  one = [np.array([[0, 0, 10, 10]])]
  m = paper.coco_metrics([(np.array([[50, 50, 60, 60], [0, 0, 10, 10]]), np.array([0.9, 0.8]))],
                         one)
  assert m["AP50"] == pytest.approx(50.0) and m["AR"] == pytest.approx(100.0)
  # half the cells found, no false positive: recall points 0..0.5 (51 of 101) at precision 1
  m = paper.coco_metrics([(np.zeros((0, 4)), np.zeros(0)), (gt[1][:1], np.ones(1))],
                         [np.zeros((0, 4)), gt[1]])
  assert m["AP50"] == pytest.approx(100 * 51 / 101) and m["AR"] == pytest.approx(50.0)
  # a detection on an image without cells is a false positive (tied score: ranked alike)
  m = paper.coco_metrics([(gt[0], np.full(1, 0.5)), (gt[1][:1], np.ones(1))],
                         [np.zeros((0, 4)), gt[1]])
  assert m["AP50"] == pytest.approx(100 * 51 / 101) and m["AR"] == pytest.approx(50.0)
  # IoU 0.6: a hit at thresholds 0.50, 0.55, 0.60 only
  shifted = np.array([[0, 0, 10, 12.0 / 0.6 - 10 + 0.0]])  # [0,0,10,10] vs [0,0,10,h]: iou 10/h
  shifted[0, 3] = 10 / 0.6
  m = paper.coco_metrics([(shifted, np.ones(1))], one)
  assert m["AP"] == pytest.approx(30.0) and m["AP75"] == 0.0 and m["AR"] == pytest.approx(30.0)
  # one ground-truth box is matched once: a duplicate is a false positive
  m = paper.coco_metrics([(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]))],
                         one)
  assert m["AP50"] == pytest.approx(100.0) and m["AR"] == pytest.approx(100.0)
  m = paper.coco_metrics([(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]))],
                         [np.array([[0, 0, 10, 10], [100, 100, 110, 110]])])
  assert m["AP50"] == pytest.approx(100 * 51 / 101)


def test_adele_start_epoch_matches_the_formula_with_the_true_curve():
  a, b, c = 0.8, 0.7, 2.0
  curve = paper.adele_curve(np.arange(1, 11, dtype=float), a, b, c)
  go, info = paper.adele_should_start(list(curve), 10, 0.9)
  e = np.arange(1, 16, dtype=float)
  d1 = abs(a * b / c * np.exp(-1 / c) * 1.0)
  change = np.abs(np.abs(a * b / c * np.exp(-e ** b / c) * e ** (b - 1)) - d1) / d1
  change[change > 1] = 0
  want = int(np.sum(change <= 0.9)) + 1
  assert info["shift"] == 0 and info["update_epoch"] == want and go == (10 >= want)
  np.testing.assert_allclose(info["fit"], [a, b, c], rtol=1e-3)
  assert not paper.adele_should_start(list(curve), want - 1, 0.9)[0]
  # a flat start (increments < 0.1) is dropped and shifts the answer
  go2, info2 = paper.adele_should_start([0.0, 0.01] + list(curve), 12, 0.9)
  assert info2["shift"] == 1 and info2["update_epoch"] in (want + 1, want + 2)
  assert not paper.adele_should_start([0.1, 0.5], 2)[0]  # too few points to fit


def test_synthetic_like_keeps_boxed_cells_and_blurs_the_rest():
  rng = np.random.default_rng(0)
  image = (rng.uniform(0, 255, (64, 64, 3))).astype(np.uint8)
  boxes = np.array([[10, 10, 26, 22], [0, 40, 12, 64], [60, 0, 64, 3]])  # border, sliver
  out = paper.synthetic_like(image, boxes, 21)
  blur = cv2.GaussianBlur(image, (21, 21), 0)
  np.testing.assert_array_equal(out[30:38, 30:60], blur[30:38, 30:60])  # far from any box
  inside = (slice(13, 19), slice(13, 23))
  err_out = np.abs(out[inside].astype(float) - image[inside]).mean()
  err_blur = np.abs(blur[inside].astype(float) - image[inside]).mean()
  assert err_out < 0.5 * err_blur


def disc_image(seed=0):
  """Dark discs on a light background, with their exact boxes."""
  rng = np.random.default_rng(seed)
  img = np.full((96, 96, 3), 230, np.uint8)
  boxes = []
  for cy in (16, 48, 80):
    for cx in (16, 48, 80):
      r = int(rng.integers(5, 8))
      cv2.circle(img, (cx, cy), r, (60, 40, 90), -1)
      boxes.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
  return img, np.array(boxes, float)


def test_weak_label_generators_find_clear_cells():
  img, truth = disc_image()
  x = noisy_labels.cell_channel(img, "dark")
  for found in (noisy_labels.hough_boxes(x, (4, 9), 0.5),
                noisy_labels.watershed_boxes(x, 4, 20), noisy_labels.edge_boxes(x, 20),
                noisy_labels.weak_boxes(img, "dark", (4, 9), hough_threshold=0.5)):
    hit = paper.iou_matrix(truth, found).max(1) >= 0.5
    assert hit.mean() >= 8 / 9, found


def test_detector_targets_decode_back_to_the_boxes():
  boxes = [np.array([[8.0, 12.0, 20.0, 22.0], [30.0, 33.0, 46.0, 41.0]]), np.zeros((0, 4))]
  t = detector.targets(boxes, 64)
  assert t["heat"].shape == (2, 16, 16, 1) and t["mask"].sum() == 2
  assert t["heat"].max() == 1.0 and t["heat"][1].max() == 0.0
  heat = np.where(t["heat"] >= 1.0, 10.0, -10.0)
  out_boxes, scores = detector.decode((heat, t["size"], t["offset"]), max_dets=5)
  top = np.asarray(out_boxes[0])[np.asarray(scores[0]) > 0.5]
  np.testing.assert_allclose(top[np.argsort(top[:, 0])], boxes[0], atol=1e-4)


def write_png(path, array):
  Image.fromarray(array).save(path)


def test_cellpose_loader_reads_the_published_layout(tmp_path):
  (tmp_path / "train").mkdir()
  mask = np.zeros((40, 60), np.uint16)
  mask[5:10, 2:12] = 1
  mask[20:35, 40:58] = 7
  write_png(tmp_path / "train" / "000_img.png", np.full((40, 60, 3), 100, np.uint8))
  write_png(tmp_path / "train" / "000_masks.png", mask)
  ds = data_lib.load_cellpose(tmp_path, "train", 64)
  assert len(ds) == 1 and ds.image(0).shape == (64, 64, 3)
  # instances -> boxes (x1, y1, x2, y2), scaled from 60 x 40 to 64 x 64
  np.testing.assert_allclose(ds.boxes[0], [[2 * 64 / 60, 5 * 64 / 40, 12 * 64 / 60, 10 * 64 / 40],
                                           [40 * 64 / 60, 20 * 64 / 40, 58 * 64 / 60, 35 * 64 / 40]])
  write_png(tmp_path / "train" / "001_img.png", np.zeros((8, 8, 3), np.uint8))
  assert "001_masks.png is missing" in data_error(
      lambda: data_lib.load_cellpose(tmp_path, "train", 64))
  assert "no *_img.png" in data_error(lambda: data_lib.load_cellpose(tmp_path / "x", "train", 64))


def test_user_manifests_csv_and_coco_json(tmp_path):
  write_png(tmp_path / "a.png", np.zeros((32, 64, 3), np.uint8))
  write_png(tmp_path / "b.png", np.zeros((32, 32, 3), np.uint8))
  (tmp_path / "m.csv").write_text("image,x1,y1,x2,y2\na.png,0,0,16,8\na.png,32,16,64,32\n"
                                  "b.png,,,,\n")
  ds = data_lib.load_manifest("mine", tmp_path / "m.csv", 32)
  assert len(ds) == 2 and len(ds.boxes[1]) == 0
  np.testing.assert_allclose(ds.boxes[0], [[0, 0, 8, 8], [16, 16, 32, 32]])
  (tmp_path / "m.json").write_text(json.dumps({
      "images": [{"id": 3, "file_name": "a.png"}],
      "annotations": [{"image_id": 3, "bbox": [32, 16, 32, 16]}]}))
  np.testing.assert_allclose(data_lib.load_manifest("j", tmp_path / "m.json", 32).boxes[0],
                             [[16, 16, 32, 32]])


@pytest.mark.parametrize("text, message", [
    ("image,x1,y1,x2\na.png,0,0,4\n", "lacks column(s) ['y2']"),
    ("image,x1,y1,x2,y2\na.png,0,0,70,8\n", "is outside the 64x32 image"),
    ("image,x1,y1,x2,y2\nmissing.png,0,0,4,4\n", "missing.png named in the data does not exist"),
    ("image,x1,y1,x2,y2\na.png,0,zero,4,4\n", "line 2: x1,y1,x2,y2 must be numbers"),
])
def test_manifest_mistakes_are_one_line_errors(tmp_path, text, message):
  write_png(tmp_path / "a.png", np.zeros((32, 64, 3), np.uint8))
  (tmp_path / "m.csv").write_text(text)
  assert message in data_error(lambda: data_lib.load_manifest("mine", tmp_path / "m.csv", 32))


def test_mixed_batches_are_half_target_half_source():
  from types import SimpleNamespace
  from medda_jax.config_utils import load_config
  from medda_jax.methods.sissi.experiment import EpochBatches
  c = load_config("configs/sissi.py:smoke")
  size = c.data.size
  box = np.array([[8.0, 8.0, 24.0, 20.0]])
  target = data_lib.DetSet("t", size, [box] * 5, arrays=np.full((5, size, size, 3), 10, np.uint8))
  source = data_lib.DetSet("s", size, [np.zeros((0, 4))] * 3,
                           arrays=np.full((3, size, size, 3), 200, np.uint8))
  data = SimpleNamespace(target=target, source=source)
  stream = EpochBatches(c, data, target.arrays, target.boxes, seed=0, epoch=1)
  half = c.train.batch_size // 2
  assert stream.steps == 2  # ceil(5 / 4) target quarters, every target image seen
  assert sorted(set(stream.target_idx.ravel().tolist())) == [0, 1, 2, 3, 4]
  chunks = list(stream.dataset())
  assert len(chunks) == stream.steps // c.engine.steps_per_call
  b = chunks[0]
  assert b["images"].shape == (c.engine.steps_per_call, 2 * half, size, size, 3)
  assert (b["images"][0, :half] == 10).all() and (b["images"][0, half:] == 200).all()
  # one box centre per target image, none from the (box-free) source images
  assert b["mask"][0, :half].sum() == half and b["mask"][0, half:].sum() == 0
  again = EpochBatches(c, data, target.arrays, target.boxes, seed=0, epoch=1).batch(1)
  np.testing.assert_array_equal(again["heat"], stream.batch(1)["heat"])  # seed, epoch -> batch
