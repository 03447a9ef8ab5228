"""Stage 2's per-level diagnostics: in chunks of a training pass they equal one batch, and bound the batch."""

import pytest
import torch

from tests.helpers import one_step_task


@pytest.mark.parametrize("method", ["diffratio", "vsd"])
def test_diagnostics_in_chunks_equal_one_batch_and_bound_the_batch(method):
    results, batches, states = [], [], []
    for batch_size, per_pass in ((16, None), (8, 3)):  # 10 samples: one chunk; chunks of 3, 3, 3 and 1
        task = one_step_task(method, batch_size, per_pass)
        largest = [0]
        nets = [*task.networks.values(), *([task.teacher] if method == "vsd" else [])]
        for net in nets:
            net.register_forward_pre_hook(lambda m, args: largest.__setitem__(0, max(largest[0], len(args[0]))))
        torch.manual_seed(2)
        real, labels = torch.rand(10, 1, 8, 8) * 2 - 1, torch.arange(10) % 10
        results.append(task.diagnose(real, labels, images=3))
        batches.append(largest[0])
        states.append(torch.get_rng_state())
        assert all(net.training for net in task.networks.values())  # the training mode is restored
    assert batches == [10, 3]
    assert torch.equal(*states)  # the same random numbers were drawn
    whole, chunked = results
    assert [row.keys() for row in whole] == [row.keys() for row in chunked]
    for a, b in zip(whole, chunked):
        assert a["sigma"] == 0 or a["update_norm"] > 0  # sigma 0: the row at the training distribution
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
