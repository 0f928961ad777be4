"""One training step of ALGO into OUT (JSON: fields to override), run by
tests/test_train_dist.py under ``accelerate launch`` (two processes, with or without FSDP)
and directly (one)."""

import json
import os
import sys
from pathlib import Path

from sdlib.config import TrainConfig, from_dict
from sdlib.grading import Grade
from sdlib.train import onpolicy, train

algo, out = sys.argv[1], sys.argv[2]
# which processes ran: a launcher that quietly starts one process would pass any comparison
Path(f"{out}.rank{os.environ.get('RANK', 0)}").write_text(os.environ.get("WORLD_SIZE", "1"))
# the random model is never right: a reward it earns about half the time, fixed by the text
onpolicy.grade_response = lambda text, gold, **kw: Grade(len(text) % 2 == 0, "exact")
train(
    from_dict(
        TrainConfig,
        {
            "algo": algo,
            "model": "tiny-random:2x64",
            "data": ["synthetic:addition:1:16"],
            "steps": 1,
            "prompts_per_step": 4,
            "rollouts_per_prompt": 4,
            "prompts_per_update": 2,
            "micro_batch": 3,
            "max_new_tokens": 8,
            "lr": 1e-2,
            "topk": 5,
            "lora_r": 4,
            "out": out,
            **(json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}),
        },
    )
)
