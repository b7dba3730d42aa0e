"""Time to accuracy: training seconds until validation accuracy first reaches 98.5%, 99.0%, 99.5%.

One run of each pipeline, one after another: the seed's DataLoader pipeline, torchkeras'
KerasModel and the plain loop on the seed recipe (Net, Adam 0.01, cosine over 15 epochs, batch 128;
run for --epochs), then mnistlit base.yaml and speedrun.yaml through the CLI, each in fp32 and
bf16-mixed. Seconds are the epochs' own (training and validation, no start-up), summed up to the
end of the first epoch at or above the threshold; "—" when the run never got there.
benchmarks/seeds.py prints the same columns for any recipe over several seeds (strong, handwriting).
"""

import argparse
import sys
import tempfile

import torch
from run import cpu_name, measured_precisions, mnistlit, script

THRESHOLDS = (0.985, 0.99, 0.995)


def seconds_to(threshold: float, epoch_seconds: list[float], val_accs: list[float]) -> float | None:
    """Training seconds until the end of the first epoch whose validation accuracy reaches ``threshold``."""
    total = 0.0
    for seconds, accuracy in zip(epoch_seconds, val_accs, strict=True):
        total += seconds
        if accuracy >= threshold:
            return total
    return None


def row(name: str, result: dict) -> str:
    cells = [seconds_to(t, result["epoch_seconds"], result["val_accs"]) for t in THRESHOLDS]
    text = [f"{c:.1f}" if c is not None else "—" for c in cells]
    epochs = len(result["epoch_seconds"])
    return (
        f"| {name} | {' | '.join(text)} | {max(result['val_accs']):.4f} | {epochs} | "
        f"{sum(result['epoch_seconds']):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the seed-recipe pipelines")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precisions = measured_precisions(device)
    rows = [
        row("seed pipeline (DataLoader, ToTensor, tqdm), fp32",
            script("seed_pipeline.py", args.epochs, args.data_dir)),
        row("torchkeras KerasModel, fp32", script("keras_loop.py", args.epochs, args.data_dir)),
    ]  # fmt: skip
    for precision in precisions:
        flags = ["--device", device, "--precision", precision]
        rows.append(
            row(
                f"plain PyTorch loop, {precision}",
                script("plain_loop.py", args.epochs, args.data_dir, *flags),
            )
        )
    for config, epochs in (("configs/base.yaml", args.epochs), ("configs/speedrun.yaml", 2)):
        for precision in precisions:
            with tempfile.TemporaryDirectory() as logs:
                result = mnistlit(epochs, args.data_dir, device, precision, logs, config=config)
            rows.append(row(f"mnistlit {config.removeprefix('configs/')}, {precision}", result))
            print(rows[-1], file=sys.stderr, flush=True)

    print(
        f"\nTime to validation accuracy, seconds of training; {cpu_name()}, "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print("| pipeline | 98.5% | 99.0% | 99.5% | best val acc | epochs | total s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
