"""The paper's ladder (Chen, Wu et al. 2025): --config=configs/paper.py:150M; head configuration as fields.

Example: --config=configs/paper.py:470M --config.model.num_q_heads=8 --config.model.num_kv_heads=1
Ladder names and shapes come from costlaw.arch.PAPER_LADDER (trainable sizes have an LR and token budget).
"""

from ml_collections import config_dict

from configs import base
from costlaw.arch import PAPER_LADDER


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    trainable = [name for name, shape in PAPER_LADDER.items() if shape.train_tokens]
    if arg not in trainable:
        raise ValueError(
            f"configs/paper.py: unknown ladder size {arg!r}; pick one of {', '.join(trainable)} "
            "(e.g. --config=configs/paper.py:150M)"
        )
    shape = PAPER_LADDER[arg]
    c = base.get_config()
    m = c.model
    m.num_layers = shape.num_layers
    m.d_model = shape.d_model
    m.head_dim = 64
    m.num_q_heads = shape.d_model // 64  # MHA shape; GQA variants keep L and d
    m.num_kv_heads = shape.d_model // 64
    m.vocab_size = 50304  # GPT-2 vocabulary padded to a multiple of 128
    c.seq_len = 8192
    c.batch_size = 64  # 64 x 8192 = 512K tokens per step
    c.train_tokens = shape.train_tokens
    c.optimizer.learning_rate = shape.max_lr
    return c
