"""``mnistlit describe``: what a checkpoint holds, in a few lines, without training or logging anything."""

from pathlib import Path

import lightning as L

from mnistlit import checkpoints


def describe(path: str | Path, model: L.LightningModule, datamodule: L.LightningDataModule) -> str:
    """The network, dataset, training progress and best validation accuracy of checkpoint ``path``,
    with ``model`` and ``datamodule`` built from it (the CLI takes their settings from the file)."""
    checkpoint = checkpoints.load(path)
    net = model.hparams.get("net") or {"class_path": type(model.net).__qualname__}
    parameters = sum(p.numel() for p in model.net.parameters())
    saved_data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = saved_data.get("dataset")
    dataset_name = dataset if isinstance(dataset, str) else (dataset or {}).get("name", "?")
    scores = [
        float(state["best_model_score"])
        for state in checkpoint.get("callbacks", {}).values()
        if isinstance(state, dict) and state.get("best_model_path") and state.get("best_model_score")
    ]
    lines = [
        f"checkpoint: {path}",
        f"network:    {net['class_path']} {net.get('init_args', {})} ({parameters:,} parameters)",
        f"dataset:    {dataset_name} ({len(datamodule.class_names)} classes), "
        f"val_size {saved_data.get('val_size', '?')}, split_seed {saved_data.get('split_seed', '?')}",
        f"trained:    epoch {checkpoint.get('epoch', '?')}, step {checkpoint.get('global_step', '?')}",
        f"val_acc:    {max(scores):.4f} (the run's best)" if scores else "val_acc:    not recorded",
    ]
    return "\n".join(lines)
