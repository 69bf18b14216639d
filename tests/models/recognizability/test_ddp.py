"""DDP training under torchrun with two CPU processes (gloo)."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from portrait_engine.models.recognizability.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from tests.models.recognizability.test_train import (
        ClassPatterns, make_trainer, small_config,
    )

    out = sys.argv[1]
    trainer = make_trainer(out, small_config(optimizer="sgd", lr=0.05, epochs=2))
    assert trainer.dist.world_size == 2
    result = trainer.fit()
    state = {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}
    torch.save({"state": state, "step": result.step}, f"{out}/rank{trainer.dist.rank}.pt")
    dist.destroy_process_group()
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_in_lockstep(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(script),
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    # 32 images, 8 per process: 2 global batches per epoch, 2 epochs
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    for key, value in ranks[0]["state"].items():
        if key.endswith("num_batches_tracked") or "running_" in key:
            continue  # BatchNorm statistics are per process
        assert torch.equal(value, ranks[1]["state"][key]), key
    saved = load_checkpoint(out)
    assert saved["trainer"] == {"step": 4, "world_size": 2}
    assert torch.equal(saved["head"]["weight"], ranks[0]["state"]["head.weight"])
    # each rank's degradation stream is saved, for an exact resume
    streams = saved["trainer_tensors"]
    assert not torch.equal(streams["generator.0"], streams["generator.1"])
