"""The CPU redirections for megatron-core: active without CUDA, scoped, and doing what they claim."""

import pytest
import torch

from native_megatron.training import cpu_compat


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cuda_requests_become_cpu_only_inside_the_block():
    with cpu_compat.cuda_to_cpu():
        t = torch.zeros(3, device="cuda")
        assert t.device.type == "cpu"
        assert torch.tensor([1.0], device=torch.device("cuda", 0)).device.type == "cpu"
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.to("cuda").device.type == "cpu"
    assert torch.zeros(1).type() == "torch.FloatTensor"
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_rng_tracker_forks_cpu_states_per_tensor_parallel_rank():
    from megatron.core.tensor_parallel import random as mc_random

    with cpu_compat.installed() as active:
        assert active
        _forks_per_rank(mc_random)


def _forks_per_rank(mc_random):
    mc_random.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    tracker = mc_random.get_cuda_rng_tracker()
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside)  # the default stream is untouched
    mc_random.model_parallel_cuda_manual_seed(7, tp_rank=0, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with mc_random.get_cuda_rng_tracker().fork():
        assert torch.equal(torch.rand(4), a)  # same seed, same stream
    mc_random.model_parallel_cuda_manual_seed(7, tp_rank=1, ep_rank=0, etp_rank=0, force_reset_rng=True)
    with mc_random.get_cuda_rng_tracker().fork():
        assert not torch.equal(torch.rand(4), a)  # another TP rank, another stream


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_uninstall_puts_megatron_and_torch_back():
    import megatron.core.optimizer.optimizer as mc_optimizer
    from megatron.core.tensor_parallel import random as mc_random

    def current():
        return (mc_random._get_cuda_rng_state, mc_random._set_cuda_rng_state, mc_random.CudaRNGStatesTracker.add,
                mc_optimizer.clip_grad_by_total_norm_fp32, torch.cuda.current_device, torch.cuda.synchronize,
                torch.cuda.empty_cache)

    was_installed = cpu_compat.is_installed()  # by an earlier in-process training test
    cpu_compat.uninstall()
    try:
        before = current()
        with cpu_compat.installed():
            assert torch.cuda.current_device() == "cpu"
            assert all(now is not then for now, then in zip(current(), before))
        assert current() == before
        assert not cpu_compat.is_installed()
    finally:
        if was_installed:
            cpu_compat.install()


@pytest.mark.gpu
def test_nothing_is_redirected_on_gpu():
    with cpu_compat.installed() as active:
        assert active is False
    with cpu_compat.cuda_to_cpu():
        assert torch.zeros(1, device="cuda").device.type == "cuda"
