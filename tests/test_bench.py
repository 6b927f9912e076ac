"""The benchmark's correctness (its timings are results, not test assertions)."""

import pytest
from omegaconf import OmegaConf

from lora_repro import CONF_DIR
from lora_repro.bench import memory_terms, run_bench
from lora_repro.bench_worker import measure_train

SPEC = {"model": "tiny_bert", "batch_size": 2, "seq_len": 16, "warmup_steps": 1, "steps": 1, "lr": 1e-3, "precision": "fp32"}


@pytest.mark.parametrize("method", ["full_ft", "lora", "adapter_h"])
def test_memory_model_parameter_and_optimizer_terms_equal_counted_bytes(method):
    m = measure_train({**SPEC, "method": method})
    terms = memory_terms(m["params_total"], m["params_trainable"], 4, 4, 8, 0.0)
    assert terms["weights"] == m["param_bytes"]          # fp32 weights, counted on the model
    assert terms["optimizer"] == m["optimizer_state_bytes"]  # AdamW's two fp32 moments, counted in its state
    assert terms["gradients"] == 4 * m["params_trainable"]
    # the peak comes from the instrument every run record uses, over build and training
    assert m["peak_source"] == "cpu_peak_rss_sampled" and m["peak_bytes"] > m["param_bytes"]


def test_bench_writes_its_tables_and_chart_for_a_tiny_model(tmp_path):
    cfg = OmegaConf.load(CONF_DIR / "bench.yaml")
    cfg.out_dir = str(tmp_path)
    cfg.train.models = ["tiny_bert"]
    cfg.train.methods = ["full_ft", "lora"]
    cfg.train.seq_len = 16
    cfg.latency.model = "tiny_bert"
    cfg.latency.shapes = [[1, 16]]
    cfg.latency.trials = 2
    cfg.overhead.model = "tiny_bert"
    cfg.overhead.seq_len = 16
    cfg.overhead.steps = 2
    cfg.throughput.model = "tiny_bert"
    cfg.throughput.rows = 64
    cfg.throughput.overrides = ["train.batch_size=16", "task.max_length=16", "task.max_eval_samples=64"]
    del cfg["hydra"]
    result = run_bench(cfg)
    for name in ("train.csv", "memory_model.csv", "latency.csv", "overhead.csv", "phases.csv", "bench.md", "bench.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    train = result["train"].set_index("method")
    assert train.loc["full_ft", "step_time_vs_ft"] == 1.0
    assert train.loc["lora", "checkpoint_vs_full"] < 0.01
    assert set(result["latency"].variant) == {"base", "lora_unmerged", "lora_merged", "adapter_l", "adapter_h"}
    phases = dict(zip(result["phases"].phase, result["phases"].seconds)) if "phases" in result else {}
    assert {"model_load_s", "tokenize_s", "train_s", "eval_during_training_s", "results_s", "process_s"} <= set(phases)
    assert sum(v for k, v in phases.items() if k not in ("process_s",)) == pytest.approx(phases["process_s"], rel=0.05)
    assert "## Where a study's run spends its time (tiny_bert + lora, rotten_tomatoes, 64 rows)" in result["markdown"]
    assert "| merged LoRA latency / base" in result["markdown"] and "harness / bare loop" in result["markdown"]
    assert "FT/LoRA peak memory, live tensors" not in result["markdown"]  # only for gpt2_medium
    assert train.loc["lora", "ft_tensor_memory_over_this"] > 1.0


def test_live_tensor_bytes_counts_allocations_and_frees():
    import torch

    from lora_repro.profiling import LiveTensorBytes

    with LiveTensorBytes(start=100) as mode:
        a = torch.ones(1000)            # 4,000 bytes
        b = a * 2                       # 4,000 more
        del a
        c = torch.zeros(10, dtype=torch.float64)  # 80
    assert mode.peak == 100 + 8000 + 80 or mode.peak == 100 + 8000  # a may be freed before c exists
    assert mode.live == 100 + 4000 + 80
    assert b.sum() == 2000 and c.sum() == 0


def test_live_tensor_bytes_counts_a_weight_once_through_its_views_and_in_place_updates():
    """linear() hands the mode weight.t() and AdamW's in-place updates hand it the tensors they
    update: both share a storage that was alive before the mode began, and counting it again made
    full FT's peak 7 weight-copies instead of 4 (weights, gradients, two moments)."""
    import torch

    from lora_repro.profiling import LiveTensorBytes, live_tensors

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256, bias=False) for _ in range(4)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    x = torch.randn(2, 256)

    def step():
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's moments exist from here on
    weights = 4 * 256 * 256 * 4
    with LiveTensorBytes(existing=live_tensors(model, optimizer)) as mode:
        assert mode.live == mode.peak == 3 * weights + 4 * 4  # weights, two moments, four step counters
        view = model[0].weight.t()
        model[0].weight.data.mul_(1.0)
        assert mode.live == 3 * weights + 16
        del view
        step()
    assert mode.live == 3 * weights + 16   # back where it began: nothing leaked into the count
    # the step's peak: weights, moments, gradients (one weight-copy each) and AdamW's temporaries,
    # which foreach=False keeps to a few one-layer tensors (counting the weights again gave 7 copies)
    assert 4 * weights <= mode.peak < 5 * weights
    kept = torch.zeros(10)
    with LiveTensorBytes(start=100, existing=[kept, kept.view(2, 5)]) as mode:
        assert mode.live == 140   # one storage, counted once
        del kept
        assert mode.live == 100   # and uncounted when it is freed


def test_tensor_level_peak_holds_weights_gradients_and_adam_state_and_separates_the_methods():
    full = measure_train({**SPEC, "method": "full_ft"})
    lora = measure_train({**SPEC, "method": "lora"})
    for m in (full, lora):
        # During the optimizer step weights, gradients and AdamW's two moments are all alive.
        assert m["peak_tensor_bytes"] >= m["param_bytes"] + 4 * m["params_trainable"] + m["optimizer_state_bytes"]
        assert m["peak_tensor_source"] in ("cpu_live_tensors_one_step", "cuda_max_memory_allocated")
    assert full["peak_tensor_bytes"] > 1.5 * lora["peak_tensor_bytes"]


def test_latency_rounds_interleave_the_variants_in_rotating_order():
    import torch

    from lora_repro.bench import forward_latencies

    calls = []

    class Named(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, input_ids):
            calls.append(self.name)

    times = forward_latencies({n: Named(n) for n in ("base", "a", "b")}, (1, 4), 10, trials=3, warmup=1)
    assert calls == ["base", "a", "b", "a", "b", "base", "b", "base", "a", "base", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"base": 3, "a": 3, "b": 3}  # warm-up round dropped


@pytest.mark.parametrize("value, low, high, expected", [
    (0.99, 0.97, 1.01, "met"),                        # the whole interval is under the 1.02 target
    (0.99, 0.95, 1.04, "interval spans the target"),  # a point estimate under the target is not enough
    (1.10, 1.05, 1.12, "missed by 8%"),
])
def test_a_ratio_is_met_only_when_its_whole_interval_is(value, low, high, expected):
    from lora_repro.bench import verdict

    assert verdict(value, 1.02, False, low, high) == expected
