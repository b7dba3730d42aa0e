"""``mnistlit describe``: what a checkpoint holds, in a few lines, without training or logging anything."""

from pathlib import Path

from mnistlit.core.data import MNISTDataModule
from mnistlit.core.module import LitClassifier


def summary(path: str | Path, checkpoint: dict, model: LitClassifier, datamodule: MNISTDataModule) -> dict:
    """The network, dataset, training progress and best validation accuracy of a checkpoint,
    with ``model`` and ``datamodule`` built from it (the CLI takes their settings from the file)."""
    net = model.hparams.get("net") or {"class_path": type(model.net).__qualname__}
    saved_data = checkpoint.get("datamodule_hyper_parameters") or {}
    dataset = saved_data.get("dataset")
    scores = [
        float(state["best_model_score"])
        for state in checkpoint.get("callbacks", {}).values()
        if isinstance(state, dict) and state.get("best_model_path") and state.get("best_model_score")
    ]
    return {
        "checkpoint": str(path),
        "net": net["class_path"],
        "net_init_args": net.get("init_args", {}),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "dataset": dataset if isinstance(dataset, str) else (dataset or {}).get("name", "?"),
        "classes": len(datamodule.class_names),
        "val_size": saved_data.get("val_size"),
        "split_seed": saved_data.get("split_seed"),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "val_acc": max(scores) if scores else None,
        "unsure_below": checkpoint.get("unsure_below"),
    }


def run_relative(path: str | Path) -> str:
    """A checkpoint's name, from its run folder when it lies in one (``version_3/checkpoints/x.ckpt``):
    what the server shows, without this machine's folders."""
    path = Path(path)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/checkpoints/{path.name}"
    return path.name


def describe(about: dict) -> str:
    """A ``summary`` as the lines ``mnistlit describe`` prints."""
    val_acc = f"{about['val_acc']:.4f} (the run's best)" if about["val_acc"] is not None else "not recorded"
    unsure = (
        f"answers below {about['unsure_below']:.4f} probability (calibrated on the validation split)"
        if about["unsure_below"] is not None
        else "no threshold (trained before mnistlit 0.3, without validation, or with unsure_threshold off)"
    )
    return "\n".join(
        [
            f"checkpoint: {about['checkpoint']}",
            f"network:    {about['net']} {about['net_init_args']} ({about['parameters']:,} parameters)",
            f"dataset:    {about['dataset']} ({about['classes']} classes), "
            f"val_size {about['val_size']}, split_seed {about['split_seed']}",
            f"trained:    epoch {about['epoch']}, step {about['global_step']}",
            f"val_acc:    {val_acc}",
            f"unsure:     {unsure}",
        ]
    )
