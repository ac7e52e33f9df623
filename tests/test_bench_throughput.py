"""``slas bench throughput``: the tiny-model run on the CPU, and the full-size builders the GPU script uses."""

from __future__ import annotations

import pytest
import torch

from slas.bench.throughput import BenchSettings, full_size_pipeline, run_throughput_bench, write_report


@pytest.mark.parametrize("model,finetune", [("sd", "full"), ("flux", "lora")])
def test_throughput_bench_runs_both_loop_structures(model, finetune, tmp_path):
    settings = BenchSettings(model=model, finetune=finetune, lora_rank=4, num_steps=3, groups=2, group_size=2,
                             batch_size=2, timestep_fraction=0.5)
    report = run_throughput_bench(settings)
    assert [(r.structure.split(":")[0], r.phase.split(" ")[0]) for r in report.rows] == [
        ("batched group per call, rewards in memory", "rollout"), ("DanceGRPO", "rollout"),
        ("batched", "training"), ("DanceGRPO", "training")]
    assert all(r.items == 4 and r.seconds > 0 and r.rate > 0 and r.peak_gb > 0 for r in report.rows)
    text = report.format()
    assert "Rollout speed-up of the batched structure" in text and ("LoRA r 4" in text) == (finetune == "lora")
    out = tmp_path / "gpu.md"
    write_report(report, out, append=False)
    write_report(report, out, append=True)
    assert out.read_text().count("| loop structure |") == 2


def test_full_size_builders_have_the_real_sizes():
    """Built on the meta device (no memory): the SD1.4 UNet, FLUX.1-dev transformer and VAEs at full size."""
    sd = full_size_pipeline("sd", torch.device("meta"), torch.bfloat16)
    flux = full_size_pipeline("flux", torch.device("meta"), torch.bfloat16)

    def billions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e9

    assert billions(sd.unet) == pytest.approx(0.8595, abs=1e-3)
    assert billions(flux.transformer) == pytest.approx(11.901, abs=1e-2)
    assert flux.transformer.config.guidance_embeds  # FLUX.1-dev, guidance-distilled
    assert billions(sd.vae) == pytest.approx(0.0837, abs=1e-3) and flux.vae.config.latent_channels == 16
    assert sd.text_encoder.config.hidden_size == sd.unet.config.cross_attention_dim == 768
    assert flux.text_encoder_2.config.d_model == flux.transformer.config.joint_attention_dim == 4096
