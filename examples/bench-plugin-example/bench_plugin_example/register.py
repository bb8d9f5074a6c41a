"""What this plugin registers: plain dicts, read by `bench list` and validation without importing torch."""

DDPO_2_RANK = dict(
    like="ddpo-2",  # DDPO-2's update shape, source setting and hyperparameters...
    target="bench_plugin_example.method:RankDDPO",  # ...with this trainer
    summary="DDPO-2 with rank-based advantages: each epoch's rewards replaced by their centred, scaled ranks",
    hparams=dict(rank_scale=1.0),  # a key of its own...
    hparam_ranges=dict(rank_scale=(1e-3, 100.0)),  # ...with its declared range
)

BRIGHTNESS = dict(
    target="bench_plugin_example.reward:Brightness",
    summary="mean pixel brightness in [0, 1] (an example reward: no weights, differentiable)",
    higher_is_better=True, differentiable=True, scale="0-1",
)
