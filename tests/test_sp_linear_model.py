"""A whole all-linear model (``LLLL``) on 4 gloo ranks with LASP-2 and ZeCO equals the
single-process reference step: loss and every parameter gradient, both layouts.

Each rank runs its shard of the group's stream (``PackedSeqs.for_rank``), back-propagates its
token-loss sum divided by the global token count, and the parameter gradients are summed over
the group. Padding tokens form their own document and carry no loss.

Tolerance: fp32. Every parameter gradient is a sum over ranks (all-reduce) of partial sums,
and the linear-attention states are summed across ranks in another order than the
single-process scan; observed errors are at most 3e-6 of each tensor's largest entry (loss:
1e-7), checked at 1e-5 of that scale (as in ``test_dp_grads``). A lost state or a wrong decay
is O(1e-2) of the scale or more.
"""

import pytest
import torch
import torch.distributed as dist

from hetero_sp.engine.loss import IGNORE_INDEX, token_loss_sum
from hetero_sp.model import PackedSeqs
from hetero_sp.parallel import SPContext, make_layout
from hetero_sp.reference import pack_documents, reference_step
from tests.common import assert_rel_close, random_docs, tiny_model
from tests.distributed import run_ranks

LENGTHS = [90, 7, 301, 33, 1, 64]
LAYERS = "LLLL"
WORLD = 4


def _sp_step(rank, world_size, strategy):
    inputs, labels, lengths = pack_documents(random_docs(LENGTHS))
    global_tokens = int(labels.numel())
    out = {}
    for kind in ("contiguous", "zigzag"):
        model = tiny_model(LAYERS)
        layout = make_layout(lengths, world_size, kind)
        tokens_T = torch.cat([inputs, inputs.new_zeros(layout.num_pad)])
        labels_T = torch.cat([labels, labels.new_full((layout.num_pad,), IGNORE_INDEX)])
        sp = SPContext(dist.group.WORLD, rank, world_size, layout, linear_strategy=strategy)
        idx = layout.local_index(rank)
        loss_sum = token_loss_sum(model(tokens_T[idx], PackedSeqs.for_rank(sp)), labels_T[idx])
        (loss_sum / global_tokens).backward()
        grads = {}
        for name, p in model.named_parameters():
            grad = p.grad.detach().clone()
            dist.all_reduce(grad)
            grads[name] = grad
        total = loss_sum.detach().clone()
        dist.all_reduce(total)
        out[kind] = {"loss": (total / global_tokens).item(), "grads": grads}
    return out


@pytest.mark.parametrize("strategy", ["lasp2", "zeco"])
def test_llll_model_equals_reference(strategy):
    results = run_ranks(_sp_step, WORLD, strategy)
    ref = reference_step(tiny_model(LAYERS), *pack_documents(random_docs(LENGTHS)))
    for kind in ("contiguous", "zigzag"):
        for rank, per_rank in enumerate(results):
            r = per_rank[kind]
            label = f"{strategy} {kind} rank {rank}"
            # fp32 loss sums reduced over ranks in another order than one process sums them.
            assert r["loss"] == pytest.approx(ref.loss.item(), rel=1e-6), label
            for name, expected in ref.grads.items():
                assert_rel_close(r["grads"][name], expected, 1e-5, f"{label} {name}")
