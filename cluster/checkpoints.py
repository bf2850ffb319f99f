"""Mid-epoch checkpoints of a distributed run: the averaged state every few rounds, so a
driver that dies resumes inside the epoch it was in.
"""
from __future__ import annotations

import os


def save_round(model, folder, epoch: int, position: int) -> None:
    """A checkpoint of the averaged state mid-epoch: ``folder/round`` (a checkpoint as
    :func:`dlrun.engine.models.checkpoints.save_checkpoint` writes it, each written atomically)
    and ``folder/round.json`` (where in the epoch), matched by the model's step."""
    import json
    from pathlib import Path

    from dlrun.engine.models.checkpoints import save_checkpoint

    folder = Path(folder)
    save_checkpoint(model, folder / "round", epoch)
    tmp = folder / f".round.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"epoch": epoch, "position": position,
                               "step": model.training.step}))
    os.replace(tmp, folder / "round.json")

def restore_round(model, folder, epoch: int, echo) -> int:
    """Restore a mid-epoch checkpoint of ``epoch`` from ``folder``, if there is a sound
    one; returns the batches of the epoch it had done (0: none)."""
    import json
    from pathlib import Path

    from dlrun.engine.models.checkpoints import read_checkpoint, restore_checkpoint
    from dlrun.errors import ModelFileError

    if folder is None or not (Path(folder) / "round.json").is_file():
        return 0
    folder = Path(folder)
    try:
        where = json.loads((folder / "round.json").read_text())
        if where["epoch"] != epoch:
            return 0                              # older than the epoch checkpoint
        if read_checkpoint(folder / "round")["step"] != where["step"]:
            raise ModelFileError("round.json and the round checkpoint disagree")
        restore_checkpoint(model, folder / "round")
    except (ModelFileError, OSError, ValueError, KeyError, TypeError) as e:
        echo(f"the mid-epoch checkpoint in {folder} is not usable ({e}); continuing from "
             "the last epoch's")
        return 0
    model.training.resume = None
    echo(f"continuing epoch {epoch + 1} after batch {where['position']} from the mid-epoch "
         "checkpoint")
    return int(where["position"])
