"""The robustness benchmark: its corruptions (shape, range, determinism, the digit kept) and a
quick end-to-end run of benchmarks/robustness.py on tiny data."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from skimage.filters import gaussian

from tests.helpers import CLI_ENV, ROOT, draw_digits

sys.path.insert(0, str(ROOT / "benchmarks"))
import robustness  # noqa: E402
from corruptions import CORRUPTIONS, corrupt  # noqa: E402
from robustness import as_predict_sees_it, recipe_checkpoints  # noqa: E402

DIGITS, LABELS = draw_digits(40, seed=5)


def grey(image) -> np.ndarray:
    """A corruption's output as a (28, 28) grey array, light ink on black."""
    if isinstance(image, Image.Image):
        return 255 - np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BOX))
    return np.asarray(image)


def _closer_to_own_digit(corrupted: np.ndarray, clean: np.ndarray) -> float:
    """The share of corrupted digits more like their own clean digit than like other labels' (blurred
    correlation: a corrupted image keeps its label when it still looks like its digit)."""

    def unit(images):
        flat = np.stack([gaussian(x.astype(float), sigma=1) for x in images]).reshape(len(images), -1)
        flat -= flat.mean(1, keepdims=True)
        return flat / np.maximum(1e-9, np.linalg.norm(flat, axis=1, keepdims=True))

    similarity = unit(corrupted) @ unit(clean).T
    other = [similarity[i, LABELS[i] != LABELS].mean() for i in range(len(LABELS))]
    return float(np.mean(np.diag(similarity) > other))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corruption_is_a_28x28_image_the_same_every_time(name: str) -> None:
    first, again = corrupt(name, DIGITS, seed=0), corrupt(name, DIGITS, seed=0)
    assert len(first) == len(DIGITS)
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    seen = np.stack([as_predict_sees_it(image) for image in first])
    assert seen.shape == (len(DIGITS), 28, 28) and seen.dtype == np.uint8
    raw = np.stack([grey(image) for image in first])
    assert raw.dtype == np.uint8 and raw.shape == (len(DIGITS), 28, 28)
    assert not np.array_equal(raw, DIGITS), "the corruption changes the digits"
    assert np.array_equal(np.asarray(corrupt(name, DIGITS[:5], seed=0)[4]), np.asarray(first[4])), (
        "the first N images get the same corruption whatever N is"
    )


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corrupted_digit_still_looks_like_its_own_digit(name: str) -> None:
    corrupted = corrupt(name, DIGITS, seed=0)
    # Some corruptions keep the digit's pixels (noise, blur), others only what predict makes of
    # them (a shift, inverted ink, a photo, edges): either view must keep the digit.
    as_made = _closer_to_own_digit(np.stack([grey(image) for image in corrupted]), DIGITS)
    as_seen = _closer_to_own_digit(
        np.stack([as_predict_sees_it(image) for image in corrupted]),
        np.stack([as_predict_sees_it(digit) for digit in DIGITS]),
    )
    assert max(as_made, as_seen) >= 0.8, (as_made, as_seen)


def test_the_newest_run_of_each_recipe_is_found(tmp_path: Path) -> None:
    def run(version: int, config: dict, best: bool = True) -> None:
        folder = tmp_path / f"version_{version}" / "checkpoints"
        folder.mkdir(parents=True)
        (folder.parent / "config.yaml").write_text(yaml.safe_dump(config))
        if best:
            (folder / f"best-{version}.ckpt").write_bytes(b"")

    strong = yaml.safe_load((ROOT / "configs" / "strong.yaml").read_text())
    base = {"trainer": {"max_epochs": 15}, "model": {"net": {"class_path": "mnistlit.core.nets.Net"}}}
    run(0, base)
    run(1, strong)
    run(2, {**strong, "trainer": {"max_epochs": 1}})  # a shortened run is not the recipe
    run(3, base, best=False)  # no best checkpoint yet
    found = recipe_checkpoints(tmp_path)
    assert found["base"] == tmp_path / "version_0" / "checkpoints" / "best-0.ckpt"
    assert found["strong"] == tmp_path / "version_1" / "checkpoints" / "best-1.ckpt"
    assert "speedrun" not in found


def test_the_benchmark_runs_end_to_end_on_tiny_data(reference_run: Path, tmp_path: Path) -> None:
    (best,) = (reference_run / "checkpoints").glob("best*.ckpt")
    data = reference_run.parent.parent / "data"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--ckpt_path", str(best),
         "--data_dir", str(data), "--images", "20", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=CLI_ENV,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "robustness.csv") as f:
        rows = {row[0]: row[1:] for row in csv.reader(f)}
    assert {*CORRUPTIONS, "clean", "clean, as stored", "mean, all corruptions", "mean, low-res scans"} <= set(
        rows
    )
    with open(tmp_path / "per_digit.csv") as f:
        per_digit = list(csv.DictReader(f))
    assert [row["set"] for row in per_digit] == list(robustness.PER_DIGIT)
    with open(tmp_path / "styles.csv") as f:
        (styles,) = csv.DictReader(f)
    assert styles["style"] == "4s closed at the top" and set(robustness.PER_DIGIT) <= set(styles)
    assert all(0 <= float(row[str(d)]) <= 1 for row in per_digit for d in range(10) if row[str(d)] != "nan")
    assert all(0 <= float(value) <= 1 for name, (value,) in rows.items() if name != "corruption")
    assert "| clean, as stored |" in result.stdout
    with open(tmp_path / "unsure.csv") as f:
        (unsure,) = csv.DictReader(f)
    threshold = torch.load(best, weights_only=True)["unsure_below"]
    assert float(unsure["threshold"]) == pytest.approx(threshold, abs=1e-6)
    assert {f"{name} wrong caught" for name in robustness.PER_DIGIT} <= set(unsure)
    with Image.open(tmp_path / "robustness.png") as picture:
        assert picture.width > 500 and picture.height > 500


def test_scans_are_uploads_of_users_sizes_in_both_polarities_grey_and_rgb() -> None:
    for side in (8, 10, 12):
        scans = corrupt(f"scan_{side}", DIGITS)
        assert all(min(scan.size) >= 28 and max(scan.size) <= 300 * 7 // 5 + 1 for scan in scans)
        assert {scan.mode for scan in scans} == {"L", "RGB"}
        corners = [np.asarray(scan.convert("L"))[0, 0] for scan in scans]
        assert min(corners) < 20 and max(corners) > 235, "dark and light paper both"


def test_unsure_answers_are_scored_as_wrong_ones_caught_and_right_ones_flagged() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55], [0.2, 0.8]])
    labels = np.array([0, 0, 0, 0, 1])  # right, right (unsure), wrong, wrong (unsure), right
    assert robustness.unsure_scores(probs, labels, threshold=0.65) == (0.5, 1 / 3)


def test_closed_fours_are_found_by_their_loop() -> None:
    open_four, closed_four = np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.uint8)
    for four in (open_four, closed_four):
        four[4:16, 8] = four[15, 8:20] = four[4:24, 17] = 255  # left stroke, bar, right stroke
    closed_four[4, 8:18] = 255  # the top closed: a loop
    eight = closed_four.copy()
    digits, labels = np.stack([open_four, closed_four, eight]), np.array([4, 4, 8])
    assert robustness.closed_fours(digits, labels).tolist() == [1]


def test_per_digit_accuracy_and_the_most_frequent_mistakes() -> None:
    labels = np.array([4, 4, 4, 4, 9, 9, 1, 1, 1, 7])
    predicted = np.array([6, 6, 4, 4, 8, 9, 7, 1, 1, 9])
    scores = robustness.per_class(predicted, labels)
    assert scores[4] == 0.5 and scores[9] == 0.5 and scores[1] == 2 / 3 and scores[7] == 0.0
    assert robustness.confusions(predicted, labels) == "4→6 ×2, 1→7 ×1, 7→9 ×1, 9→8 ×1"
    assert robustness.confusions(labels, labels) == "none"


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (None, "No such file"),
        (b"PK\x03\x04 half a zip", "cannot load checkpoint"),
        ("foreign", "is not a checkpoint of mnistlit's LitClassifier"),
    ],
    ids=["missing", "truncated", "another-model"],
)
def test_a_bad_checkpoint_is_one_line_before_any_corrupting(
    tmp_path: Path, monkeypatch, content, phrase
) -> None:
    path = tmp_path / "model.ckpt"
    if content == "foreign":
        torch.save(
            {"state_dict": {"encoder.weight": torch.zeros(2)}, "hyper_parameters": {"hidden": 4}}, path
        )
    elif content is not None:
        path.write_bytes(content)
    args = ["robustness.py", "--ckpt_path", str(path), "--data_dir", str(tmp_path / "data")]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as stopped:
        robustness.main()
    message = str(stopped.value)
    assert message.startswith("robustness: ") and phrase in message and "\n" not in message
    assert not (tmp_path / "data").exists(), "stopped before fetching or corrupting anything"
