"""make robustness: checkpoints scored on the MNIST test set and on corrupted copies of it.

Each corruption of benchmarks/corruptions.py is applied to the first --images test digits
with fixed seeds, and every corrupted image goes through the path ``mnistlit predict`` takes
for a user's file (mnist_digit: grey levels, polarity, crop, scale to 20 pixels, centre of
mass); an image predict would reject as blank counts as wrong. Writes a table to the terminal,
robustness.csv and robustness.png (examples as the network sees them, and the accuracies), and
per_digit.csv: each digit's accuracy and the most frequent mistakes, on the clean set and the
low-resolution scans; styles.csv: the same sets' accuracy on the 4s written closed at the top;
unsure.csv: on the same sets, the share of wrong answers the checkpoint's unsure threshold catches
and the share of right answers it flags.

Default checkpoints: the best of the newest run of each recipe (configs/base.yaml,
speedrun.yaml, strong.yaml, handwriting.yaml) under lightning_logs/, a run counting as a
recipe's when its network, augmentation, epochs and dataset are the recipe's.
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from corruptions import CORRUPTIONS, MNIST_C, USERS, corrupt
from PIL import Image
from scipy import ndimage

from mnistlit.core.datasets import dataset_named, read_idx
from mnistlit.core.errors import MnistlitError, one_line
from mnistlit.core.inputs import network_input
from mnistlit.core.module import LitClassifier
from mnistlit.deploy.preprocess import mnist_digit
from mnistlit.runs import checkpoints as checks
from mnistlit.runs.folders import best_in, version_of
from mnistlit.runs.sources import ensure_files

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("base", "speedrun", "strong", "handwriting")
CLEAN, AS_STORED = "clean", "clean, as stored"
PER_DIGIT = (CLEAN, "scan_8", "scan_10", "scan_12")  # per-digit accuracy and mistakes on these


def _signature(config: dict) -> tuple:
    """What makes a run one of a recipe: network, augmentation, epochs, dataset."""
    model, data, trainer = config.get("model") or {}, config.get("data") or {}, config.get("trainer") or {}
    net = (model.get("net") or {}).get("class_path", "mnistlit.core.nets.Net")
    augment = (data.get("augment") or {}).get("class_path")
    dataset = data.get("dataset", "mnist")
    dataset = dataset if isinstance(dataset, str) else dataset.get("name")
    return net, augment, trainer.get("max_epochs"), dataset


def recipe_checkpoints(runs: Path) -> dict[str, Path]:
    """recipe name -> the best checkpoint of its newest run that has one."""
    found = {}
    folders = sorted(runs.glob("version_*"), key=version_of, reverse=True)
    for recipe in RECIPES:
        config = ROOT / "configs" / f"{recipe}.yaml"
        if not config.is_file():
            continue
        wanted = _signature(yaml.safe_load(config.read_text()))
        for run in folders:
            saved = run / "config.yaml"
            best = best_in(run / "checkpoints") if (run / "checkpoints").is_dir() else None
            if best and saved.is_file() and _signature(yaml.safe_load(saved.read_text())) == wanted:
                found[recipe] = best
                break
    return found


def as_predict_sees_it(image) -> np.ndarray:
    """A corrupted image (array or PIL) through predict's preprocessing; blank images stay blank."""
    try:
        return mnist_digit(image if isinstance(image, Image.Image) else Image.fromarray(image))
    except ValueError:  # predict skips it; here it counts as a wrong answer
        return np.zeros((28, 28), dtype=np.uint8)


def test_sets(digits: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """name -> uint8 (N, 28, 28) images as the network receives them."""
    sets = {AS_STORED: digits, CLEAN: np.stack([as_predict_sees_it(d) for d in digits])}
    for name in CORRUPTIONS:
        print(f"corrupting: {name}", file=sys.stderr, flush=True)
        sets[name] = np.stack([as_predict_sees_it(image) for image in corrupt(name, digits, seed)])
    return sets


@torch.inference_mode()
def probabilities(model: LitClassifier, images: np.ndarray) -> np.ndarray:
    """(N, classes) class probabilities of uint8 (N, 28, 28) images."""
    return np.concatenate(
        [
            model(network_input(torch.from_numpy(batch))).softmax(1).numpy()
            for batch in np.array_split(images, max(1, len(images) // 500))
        ]
    )


def predictions(model: LitClassifier, images: np.ndarray) -> np.ndarray:
    return probabilities(model, images).argmax(1)


def unsure_scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """The share of wrong answers flagged unsure (caught) and the share of right answers flagged."""
    wrong, flagged = probs.argmax(1) != labels, probs.max(1) < threshold
    caught = float(flagged[wrong].mean()) if wrong.any() else float("nan")
    return caught, float(flagged[~wrong].mean()) if (~wrong).any() else float("nan")


def per_class(predicted: np.ndarray, labels: np.ndarray) -> list[float]:
    """Accuracy on each digit 0-9."""
    return [float((predicted[labels == digit] == digit).mean()) for digit in range(10)]


def closed_fours(digits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The test set's 4s written closed at the top, found by their shape: the ink (above half
    intensity) encloses a hole of at least 3 pixels, as a closed 4's triangle does and an open 4
    does not. 58 of the 982 4s of MNIST's test set."""
    found = []
    for i in np.nonzero(labels == 4)[0]:
        background, count = ndimage.label(digits[i] <= 127)
        edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        sizes = ndimage.sum(np.ones_like(background), background, index=np.arange(1, count + 1))
        if any(size >= 3 and region not in edge for region, size in enumerate(sizes, start=1)):
            found.append(i)
    return np.array(found, dtype=int)


def confusions(predicted: np.ndarray, labels: np.ndarray, top: int = 5) -> str:
    """The most frequent mistakes, as "4→6 ×12"."""
    pairs: dict[tuple[int, int], int] = {}
    for truth, guess in zip(labels[predicted != labels], predicted[predicted != labels], strict=True):
        pairs[int(truth), int(guess)] = pairs.get((int(truth), int(guess)), 0) + 1
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]
    return ", ".join(f"{truth}→{guess} ×{count}" for (truth, guess), count in ranked) or "none"


def with_means(scores: dict[str, float]) -> dict[str, float]:
    mnist_c = statistics.mean(scores[f.__name__] for f in MNIST_C)
    users = statistics.mean(scores[f.__name__] for f in USERS)
    scans = statistics.mean(scores[name] for name in PER_DIGIT[1:])
    return {**scores, "mean, MNIST-C": mnist_c, "mean, users' shifts": users, "mean, low-res scans": scans,
            "mean, all corruptions": statistics.mean(scores[name] for name in CORRUPTIONS)}  # fmt: skip


def picture(sets: dict[str, np.ndarray], table: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [CLEAN, *CORRUPTIONS]
    examples = 6
    figure = plt.figure(figsize=(13, 0.55 * len(rows) + 1.2))
    grid = figure.add_gridspec(len(rows), examples + 1, width_ratios=[1] * examples + [examples * 1.6])
    for r, name in enumerate(rows):
        for c in range(examples):
            axis = figure.add_subplot(grid[r, c])
            axis.imshow(sets[name][c], cmap="gray", vmin=0, vmax=255)
            axis.set_xticks([]), axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    bars = figure.add_subplot(grid[:, examples])
    height = 0.8 / len(table)
    for i, (label, scores) in enumerate(table.items()):
        positions = np.arange(len(rows)) - 0.4 + (i + 0.5) * height  # beside the row's examples
        bars.barh(positions, [scores[name] for name in rows], height=height, label=label)
    bars.set_ylim(len(rows) - 0.5, -0.5)
    bars.set_yticks([])
    bars.set_xlim(0, 1)
    bars.set_xlabel("accuracy")
    bars.grid(axis="x", alpha=0.3)
    bars.legend(loc="upper left", bbox_to_anchor=(0, -0.04), ncol=4, fontsize=8, frameon=False)
    figure.subplots_adjust(left=0.1, right=0.98, top=0.96, bottom=0.05, hspace=0.08, wspace=0.05)
    figure.suptitle("Test digits as the network receives them (after predict's preprocessing), and accuracy")
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def load_model(path: Path) -> LitClassifier:
    """The checkpoint's model, or one line that says why it cannot be scored."""
    try:
        checks.load(path)  # missing, truncated, foreign or unsafe files: the CLI's own messages
        return LitClassifier.load_from_checkpoint(path, map_location="cpu").eval()
    except MnistlitError as e:
        sys.exit(f"robustness: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - a Lightning checkpoint of some other model
        sys.exit(f"robustness: {path} is not a checkpoint of mnistlit's LitClassifier: {one_line(e, 200)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", nargs="+", help="checkpoints (default: each recipe's newest best)")
    parser.add_argument("--data_dir", default=str(ROOT / "data"), help="holds mnist/ (fetched if missing)")
    parser.add_argument("--images", type=int, default=10_000, help="the first N test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions")
    parser.add_argument("--output", default="robustness", help="folder for robustness.csv and .png")
    args = parser.parse_args()

    if args.ckpt_path:
        checkpoints = {Path(p).parent.parent.name + "/" + Path(p).name: Path(p) for p in args.ckpt_path}
    else:
        checkpoints = recipe_checkpoints(ROOT / "lightning_logs")
    if not checkpoints:
        sys.exit("robustness: no checkpoints: train a recipe first, or give --ckpt_path")
    models = {label: load_model(path) for label, path in checkpoints.items()}  # before minutes of corrupting
    folder = Path(args.data_dir) / "mnist"
    if not (folder / "t10k-images-idx3-ubyte").is_file():
        ensure_files(dataset_named("mnist"), args.data_dir)
    digits = read_idx(folder / "t10k-images-idx3-ubyte")[: args.images].numpy()
    labels = read_idx(folder / "t10k-labels-idx1-ubyte")[: args.images].numpy()
    sets = test_sets(digits, args.seed)

    table, answers, unsure = {}, {}, {}
    for label, model in models.items():
        print(f"scoring: {label} ({checkpoints[label]})", file=sys.stderr, flush=True)
        probs = {name: probabilities(model, images) for name, images in sets.items()}
        answers[label] = {name: p.argmax(1) for name, p in probs.items()}
        if model.unsure_below is not None:
            unsure[label] = (model.unsure_below, [unsure_scores(probs[name], labels, model.unsure_below)
                                                  for name in PER_DIGIT])  # fmt: skip
        table[label] = with_means({name: float((p == labels).mean()) for name, p in answers[label].items()})

    rows = list(next(iter(table.values())))
    print(f"{len(digits):,} MNIST test images, corruption seed {args.seed}\n")
    print("| corruption | " + " | ".join(table) + " |")
    print("|---|" + "---:|" * len(table))
    for name in rows:
        print(f"| {name} | " + " | ".join(f"{scores[name]:.4f}" for scores in table.values()) + " |")

    print("\nPer digit, on the clean set and the low-resolution scans:\n")
    print("| checkpoint | set | " + " | ".join(str(d) for d in range(10)) + " | most frequent mistakes |")
    print("|---|---|" + "---:|" * 10 + "---|")
    per_digit_rows = []
    for label in table:
        for name in PER_DIGIT:
            scores = per_class(answers[label][name], labels)
            mistakes = confusions(answers[label][name], labels)
            per_digit_rows.append([label, name, *(f"{x:.4f}" for x in scores), mistakes])
            print(f"| {label} | {name} | " + " | ".join(f"{x:.3f}" for x in scores) + f" | {mistakes} |")

    closed = closed_fours(digits, labels)
    print(f"\n4s closed at the top ({len(closed)} found in these test digits, by shape): accuracy\n")
    print("| checkpoint | " + " | ".join(PER_DIGIT) + " |\n|---|" + "---:|" * len(PER_DIGIT))
    style_rows = []
    for label in table:
        scores = [float((answers[label][name][closed] == 4).mean()) if len(closed) else float("nan")
                  for name in PER_DIGIT]  # fmt: skip
        style_rows.append([label, "4s closed at the top", len(closed), *(f"{x:.4f}" for x in scores)])
        print(f"| {label} | " + " | ".join(f"{x:.3f}" for x in scores) + " |")

    print("\nUnsure answers (probability below the checkpoint's threshold): wrong caught / right flagged\n")
    print("| checkpoint | threshold | " + " | ".join(PER_DIGIT) + " |\n|---|---:|" + "---:|" * len(PER_DIGIT))
    for label, (threshold, scores) in unsure.items():
        cells = " | ".join(f"{caught:.3f} / {flagged:.3f}" for caught, flagged in scores)
        print(f"| {label} | {threshold:.4f} | {cells} |")

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "per_digit.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "set", *(str(d) for d in range(10)), "most frequent mistakes"])
        writer.writerows(per_digit_rows)
    with open(output / "styles.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["checkpoint", "style", "digits", *PER_DIGIT])
        writer.writerows(style_rows)
    with open(output / "unsure.csv", "w", newline="") as f:
        writer = csv.writer(f)
        columns = [f"{name} {kind}" for name in PER_DIGIT for kind in ("wrong caught", "right flagged")]
        writer.writerow(["checkpoint", "threshold", *columns])
        writer.writerows([label, f"{threshold:.6f}", *(f"{x:.4f}" for pair in scores for x in pair)]
                         for label, (threshold, scores) in unsure.items())  # fmt: skip
    with open(output / "robustness.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["corruption", *table])
        writer.writerows([name, *(f"{scores[name]:.4f}" for scores in table.values())] for name in rows)
    picture(sets, table, output / "robustness.png")
    names = ("robustness.csv", "per_digit.csv", "styles.csv", "unsure.csv")
    written = ", ".join(str(output / name) for name in names)
    print(f"\nwritten: {written}, {output / 'robustness.png'}")


if __name__ == "__main__":
    main()
