"""One line, instead of a distributed traceback, for a DDP run that lost one of its processes."""

import torch.distributed as dist

# What gloo and the TCP store say when the process at the other end is gone (killed, its machine lost).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def lost_process(error: BaseException) -> str | None:
    """The line to say for ``error`` if it means another process of the run is gone, else None."""
    text = str(error)
    if isinstance(error, dist.DistStoreError) and "timeout" in text:
        return (
            "not every process of this DDP run joined within the strategy's timeout: another node failed "
            "before joining or never started (see its output); --trainer.strategy.timeout sets the wait"
        )
    if isinstance(error, RuntimeError) and any(phrase in text for phrase in PEER_GONE):
        return (
            "another process of this DDP run stopped, so this one stopped too; "
            "its checkpoints are kept: run every node again with --ckpt_path last"
        )
    return None
