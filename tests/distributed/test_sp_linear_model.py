"""A whole all-linear model (``LLLL``) on 4 gloo ranks with LASP-2 and ZeCO equals the
single-process reference step: loss and every parameter gradient, both layouts. A hybrid
``LSLS`` model on groups smaller than the world (group ranks != global ranks) does too, with
every softmax/linear strategy pair on the layout its softmax strategy asks for.

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
from hetero_sp.parallel import SPContext, layout_kind_for, make_layout
from hetero_sp.reference import pack_documents, reference_step
from tests.common import assert_rel_close, random_docs, tiny_model
from tests.rank_pool import run_ranks

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


HYBRID_LENGTHS = [70, 3, 1, 45, 2, 33]


def _hybrid_step(rank, world_size, softmax, linear, group_ranks):
    group = dist.new_group(group_ranks)
    if rank not in group_ranks:
        return None
    size, me = len(group_ranks), group_ranks.index(rank)
    layout = make_layout(HYBRID_LENGTHS, size, layout_kind_for(softmax))
    sp = SPContext(group, me, size, layout, softmax_strategy=softmax, linear_strategy=linear)
    inputs, labels, _ = pack_documents(random_docs(HYBRID_LENGTHS))
    tokens_T = torch.cat([inputs, inputs.new_zeros(layout.num_pad)])
    labels_T = torch.cat([labels, labels.new_full((layout.num_pad,), IGNORE_INDEX)])
    idx = layout.local_index(me)
    model = tiny_model("LSLS")
    loss_sum = token_loss_sum(model(tokens_T[idx], PackedSeqs.for_rank(sp)), labels_T[idx])
    (loss_sum / sum(HYBRID_LENGTHS)).backward()
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = p.grad.detach().clone()
        dist.all_reduce(grads[name], group=group)
    total = loss_sum.detach().clone()
    dist.all_reduce(total, group=group)
    return {"loss": (total / sum(HYBRID_LENGTHS)).item(), "grads": grads}


# Groups that are not the whole world, so group ranks differ from global ranks; each softmax
# strategy brings its layout (ulysses: contiguous, needs P | heads; allgather_kv: zigzag).
@pytest.mark.parametrize(
    "softmax, linear, group_ranks",
    [
        ("ulysses", "lasp2", [1, 3]),
        ("ulysses", "zeco", [1, 3]),
        ("allgather_kv", "lasp2", [1, 2, 3]),
        ("allgather_kv", "zeco", [1, 2, 3]),
    ],
)
def test_hybrid_model_on_a_subgroup_equals_reference(softmax, linear, group_ranks):
    results = run_ranks(_hybrid_step, WORLD, softmax, linear, group_ranks)
    ref = reference_step(tiny_model("LSLS"), *pack_documents(random_docs(HYBRID_LENGTHS)))
    for rank in group_ranks:
        r = results[rank]
        label = f"{softmax}+{linear} global rank {rank}"
        # Same tolerances and reasons as the all-linear test above.
        assert r["loss"] == pytest.approx(ref.loss.item(), rel=1e-6), label
        for name, expected in ref.grads.items():
            assert_rel_close(r["grads"][name], expected, 1e-5, f"{label} {name}")
