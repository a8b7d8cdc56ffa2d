"""The GPU path: the same numbers as the CPU and as snntorch, and a whole run on CUDA.

Skipped without a CUDA GPU (CI has none); run them on one with ``pytest tests/test_cuda.py``.
On CUDA the LIF loop is the eager PyTorch path (the C kernels are CPU-only), so these tests
pin that path on the device it exists for. They compare in float32 with TF32 off; cuDNN and
the CPU (or a per-step loop) sum a convolution in different orders, so a membrane that lands
within rounding of the threshold may spike on one side only: counts must agree on all but a
rare neuron, and gradients in direction.
"""

import json

import pytest
import torch
from test_encoders import encoder_pair, snntorch_forward
from test_pipeline import small_config

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _backward(counts, target):
    ((counts - target) ** 2).sum().backward()


def _assert_close(counts, counts_ref, model, ref):
    counts, counts_ref = counts.cpu(), counts_ref.cpu()
    assert counts_ref.sum() > 0, "the reference comparison must involve spikes"
    assert (counts != counts_ref).float().mean() <= 0.01, (counts - counts_ref).abs().sum()
    assert (counts - counts_ref).abs().sum() <= 0.001 * counts_ref.sum()
    for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
        g, g_ref = p.grad.cpu().flatten(), p_ref.grad.cpu().flatten()
        assert torch.isfinite(g).all(), name
        assert torch.cosine_similarity(g, g_ref, dim=0) > 0.999, name


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_cuda_encoder_matches_per_step_snntorch_on_cuda(image_size, channels):
    enc, ref, images = encoder_pair(channels, image_size)
    enc, ref, images = enc.to(CUDA), ref.to(CUDA), images.to(CUDA)
    counts, counts_ref = enc(images, 8), snntorch_forward(ref, images, 8)
    assert counts.device.type == CUDA.type
    target = torch.randn_like(counts)
    _backward(counts, target)
    _backward(counts_ref, target)
    _assert_close(counts, counts_ref, enc, ref)


@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_cuda_encoder_matches_the_cpu_encoder(image_size, channels):
    gpu, cpu, images = encoder_pair(channels, image_size)
    gpu = gpu.to(CUDA)
    counts_cpu, counts_gpu = cpu(images, 12), gpu(images.to(CUDA), 12)
    target = torch.randn_like(counts_cpu)
    _backward(counts_cpu, target)
    _backward(counts_gpu, target.to(CUDA))
    _assert_close(counts_gpu, counts_cpu, gpu, cpu)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_whole_run_on_cuda_learns(tmp_path, precision):
    """Pretrain, kNN and fine-tune on real MNIST with device=cuda: the device reaches every
    tensor (data, augmentation, loss, kNN bank) and the run learns as it does on the CPU."""
    cfg = small_config(tmp_path, device="cuda", precision=precision)
    summary = pipeline.pretrain(cfg, tmp_path / "pretrain", progress=False)
    records = [json.loads(line) for line in (tmp_path / "pretrain" / "metrics.jsonl").open()]
    assert records[-1]["loss"] < records[0]["loss"]
    for r in records:
        assert all(0.01 < rate < 0.99 for rate in r["firing_rates"]), r
    assert summary["knn_accuracy"] > summary["knn_accuracy_at_init"] + 3.0, summary
    checkpoint = load_checkpoint(tmp_path / "pretrain")
    tuned = pipeline.finetune(cfg, checkpoint, tmp_path / "finetune", progress=False)
    assert tuned["test_accuracy"] > 80.0, tuned
