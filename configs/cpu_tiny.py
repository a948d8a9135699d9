"""Tiny GQA model on byte-level Shakespeare that trains on 2 CPU cores in about a minute."""

from ml_collections import config_dict

from configs import base


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    c = base.get_config(arg)
    m = c.model
    m.num_layers = 2
    m.d_model = 128
    m.num_q_heads = 4
    m.num_kv_heads = 2
    m.head_dim = 32
    m.vocab_size = 257  # 256 bytes + EOS
    m.rope_theta = 10_000.0  # short context: the Llama-2 base suffices
    m.dtype = "float32"  # CPUs gain nothing from bfloat16 compute
    c.seq_len = 128
    c.batch_size = 16
    c.train_steps = 600
    c.optimizer.learning_rate = 3e-3
    c.eval_every = 100
    c.checkpoint_every = 200
    c.log_every = 25
    return c
