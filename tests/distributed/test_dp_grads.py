"""Data parallelism with uneven token counts: each rank's loss is its token-loss sum scaled by
world_size / global_tokens, gradients are averaged over ranks (as DeepSpeed does), and the
result equals the single-process gradient of the whole batch."""

import pytest
import torch.distributed as dist

from hetero_sp.engine.loss import backward_scale, token_loss_sum
from hetero_sp.model import PackedSeqs
from hetero_sp.reference import pack_documents, reference_step
from tests.common import assert_rel_close, random_docs, tiny_model
from tests.rank_pool import run_ranks

LENGTHS = [300, 5, 64, 65, 1, 200, 17, 90, 33]
LAYERS = "LSLS"


def _assignment(world_size):
    """Deliberately uneven: rank r takes every document i with i % world_size == r."""
    return [[i for i in range(len(LENGTHS)) if i % world_size == r] for r in range(world_size)]


def _dp_step(rank, world_size):
    model = tiny_model(LAYERS)
    docs = random_docs(LENGTHS)
    mine = [docs[i] for i in _assignment(world_size)[rank]]
    inputs, labels, lengths = pack_documents(mine)
    global_tokens = sum(LENGTHS)
    loss_sum = token_loss_sum(model(inputs, PackedSeqs.from_lengths(lengths)), labels)
    (loss_sum * backward_scale(global_tokens, world_size)).backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.detach().clone()
        dist.all_reduce(g)
        grads[name] = g / world_size
    total = loss_sum.detach().clone()
    dist.all_reduce(total)
    return {"tokens": int(labels.numel()), "loss": (total / global_tokens).item(), "grads": grads}


@pytest.mark.parametrize("world_size", [2, 4])
def test_uneven_data_parallel_gradients_equal_single_process(world_size):
    results = run_ranks(_dp_step, world_size)
    token_counts = [r["tokens"] for r in results]
    assert len(set(token_counts)) > 1, "the test needs ranks with different token counts"

    model = tiny_model(LAYERS)
    ref = reference_step(model, *pack_documents(random_docs(LENGTHS)))
    for r in results:
        assert r["loss"] == pytest.approx(ref.loss.item(), rel=1e-6)
        for name, expected in ref.grads.items():
            # fp32; ranks sum partial gradients in another order than one process does.
            assert_rel_close(r["grads"][name], expected, 1e-5, name)
