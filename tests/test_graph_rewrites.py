"""frontend/rewrites.py: einsum written as the permutes, sums and matmuls it stands for, and disabled
autocast regions put inline; each rewritten program computes what the model computes."""

from __future__ import annotations

import pytest
import torch

from conftest import lowered_matches
from monologue_compile.errors import MonologueError
from monologue_compile.frontend.rewrites import decompose, inline_autocast, written_softmax
from monologue_compile.frontend.trace import trace
from monologue_compile.lower import CONVERTERS, lower

aten = torch.ops.aten

# (equation, operand shapes): attention both ways round, MQA's k without a head axis, projections by
# (heads, head_dim) weights, several indices summed, outer products, ellipses, implicit outputs, sums
EQUATIONS = [
    ("bhqd,bhkd->bhqk", [(1, 2, 5, 4), (1, 2, 5, 4)]),
    ("bhqk,bhkd->bhqd", [(1, 2, 5, 5), (1, 2, 5, 4)]),
    ("bqhd,bkhd->bhqk", [(1, 5, 2, 4), (1, 5, 2, 4)]),
    ("bhid,bjd->bhij", [(1, 3, 5, 4), (1, 5, 4)]),
    ("btd,dhe->bthe", [(1, 5, 6), (6, 2, 3)]),
    ("bthe,hed->btd", [(1, 5, 2, 3), (2, 3, 6)]),
    ("btd,vd->btv", [(1, 5, 6), (7, 6)]),
    ("i,j->ij", [(5,), (3,)]),
    ("bi,bj->bij", [(2, 5), (2, 3)]),
    ("...qd,...kd->...qk", [(1, 2, 5, 4), (1, 2, 5, 4)]),
    ("...d,vd", [(1, 5, 6), (7, 6)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("bij->bji", [(2, 3, 4)]),
    ("bij->bi", [(2, 3, 4)]),
    ("bd,bd->b", [(3, 4), (3, 4)]),
    ("ab,bc,cd->ad", [(2, 3), (3, 4), (4, 5)]),
    ("btd,d->bt", [(1, 5, 6), (6,)]),
]


class Einsum(torch.nn.Module):
    def __init__(self, equation):
        super().__init__()
        self.equation = equation

    def forward(self, *xs):
        return torch.einsum(self.equation, *xs)


@pytest.mark.parametrize("equation,shapes", EQUATIONS, ids=[e for e, _ in EQUATIONS])
def test_an_einsum_rewritten_computes_what_torch_einsum_does(equation, shapes):
    xs = tuple(torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes))
    ep = torch.export.export(Einsum(equation), xs, strict=False)
    decompose(ep)
    assert not [n for n in ep.graph.nodes if n.target is aten.einsum.default]
    got = ep.module()(*xs)
    assert torch.allclose(got, torch.einsum(equation, *xs), atol=1e-5), equation


def test_a_diagonal_einsum_is_refused_naming_the_equation_and_node():
    x = torch.randn(3, 3)
    ep = torch.export.export(Einsum("ii->i"), (x,), strict=False)
    with pytest.raises(MonologueError, match=r"einsum 'ii->i': an index repeated within one operand .* at fx node %einsum"):
        decompose(ep)


class EinsumAttention(torch.nn.Module):
    """Attention in einsum only, under a causal mask built in forward."""

    def __init__(self, V=20, D=16, H=2):
        super().__init__()
        self.H, self.block_size = H, 16
        self.emb = torch.nn.Embedding(V, D)
        self.qkv = torch.nn.Parameter(torch.randn(3, D, H, D // H) * 0.3)
        self.head = torch.nn.Linear(D, V)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.emb(idx)
        q, k, v = (torch.einsum("btd,dhe->bhte", x, self.qkv[i]) for i in range(3))
        s = torch.einsum("bhqe,bhke->bhqk", q, k).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -1e9)
        y = torch.einsum("bhqk,bhke->bqhe", s.softmax(-1), v).flatten(2)
        return self.head(x + y)


def test_einsum_attention_lowers_to_the_attention_op_and_matches():
    torch.manual_seed(0)
    g = lowered_matches(EinsumAttention(), 16, 20)
    assert [n.op for n in g.nodes].count("attention") == 1


class Autocast(torch.nn.Module):
    def __init__(self, enabled: bool):
        super().__init__()
        self.enabled, self.block_size = enabled, 16
        self.emb, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20)

    def forward(self, idx):
        x = self.emb(idx)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.enabled):
            y = torch.tanh(x) * 2
        return self.head(x + y.float())


def test_a_disabled_autocast_region_is_put_inline():
    from monologue_compile.frontend.module import from_module

    ep = trace(from_module(Autocast(False)).build_module(), 16)
    assert not any("wrap_with_autocast" in str(n.target) for n in ep.graph.nodes)
    assert not any(n.op == "get_attr" for n in ep.graph.nodes)
    assert [n.op for n in lower(ep).nodes].count("linear") == 1


def test_an_autocast_region_that_casts_on_the_cpu_is_refused_by_name():
    from monologue_compile.frontend.module import from_module

    with pytest.raises(MonologueError, match=r"torch.autocast\('cpu', torch.bfloat16\) region computes in "
                                             r"torch.bfloat16.* at fx node %\w+ \(test_graph_rewrites.py:\d+"):
        trace(from_module(Autocast(True)).build_module(), 16)
    assert inline_autocast  # the rewrite under test


class Lerp(torch.nn.Module):
    """nGPT's and x-transformers' value residual: torch.lerp by a learned tensor and by a number."""

    def __init__(self):
        super().__init__()
        self.block_size = 16
        self.emb, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20)
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.mix = torch.nn.Parameter(torch.rand(8))

    def forward(self, idx):
        x = self.emb(idx)
        h = torch.lerp(self.a(x), self.b(x), self.mix)
        return self.head(h.lerp(x, 0.25))


def test_lerp_is_written_as_the_ops_it_is_made_of_and_matches():
    from monologue_compile.frontend.module import from_module

    torch.manual_seed(0)
    model = Lerp().eval()
    ep = trace(from_module(model).build_module(), 16)
    assert not [n for n in ep.graph.nodes if "lerp" in str(n.target)]
    ids = torch.randint(0, 20, (1, 7))
    with torch.no_grad():
        assert torch.allclose(ep.module()(ids), model(ids), atol=1e-6)
    lowered_matches(model, 16, 20)


class Composite(torch.nn.Module):
    """One composite op (torch's own spelling of it) on x."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5, 0.1]))

    def forward(self, x):
        return self.fn(self, x)


COMPOSITE_CASES = {
    "var": lambda m, x: x.var(-1, keepdim=True),
    "var_biased_over_two_axes": lambda m, x: x.var((1, 2), unbiased=False),
    "var_correction": lambda m, x: torch.var(x, -1, correction=2),
    "std": lambda m, x: x.std(-1),
    "std_correction": lambda m, x: torch.std(x, 2, correction=0, keepdim=True),
    "var_mean": lambda m, x: torch.stack(torch.var_mean(x, -1, correction=0)),
    "var_mean_kept": lambda m, x: torch.cat(torch.var_mean(x, -1, keepdim=True), -1),
    "log_softmax": lambda m, x: torch.log_softmax(x, -1),
    "prelu_one": lambda m, x: torch.nn.functional.prelu(x, m.w[:1]),
    "prelu_channels": lambda m, x: torch.nn.functional.prelu(x.transpose(1, 2), m.w).transpose(1, 2),
    "amin": lambda m, x: x.amin(-1, keepdim=True) + x.amin(1, keepdim=True),
    "addcmul": lambda m, x: torch.addcmul(x, x, m.w, value=0.5),
    "addcdiv": lambda m, x: x.addcdiv(x, m.w.abs() + 1),
    "movedim": lambda m, x: x.movedim(0, -1),
    "movedim_lists": lambda m, x: torch.movedim(x, (0, 2), (1, 0)),
    "moveaxis": lambda m, x: x.moveaxis(-1, 0),
    "swapaxes": lambda m, x: x.swapaxes(0, 2),
    "swapdims": lambda m, x: torch.swapdims(x, 1, 2),
    "mT": lambda m, x: x.mT,
    "mH": lambda m, x: x.mH,
    "adjoint": lambda m, x: x.adjoint(),
    "narrow": lambda m, x: x.narrow(-1, 1, 2),
    "tile": lambda m, x: x.tile((2,)),
    "tile_leading": lambda m, x: torch.tile(x, (2, 1, 1, 1)),
}


@pytest.mark.parametrize("name", COMPOSITE_CASES)
def test_a_composite_rewritten_computes_what_torch_does(name):
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 3
    model = Composite(COMPOSITE_CASES[name])
    ep = torch.export.export(model, (x,), strict=False)
    decompose(ep)
    # nothing left that the lowering has no converter for
    assert not [n.target for n in ep.graph.nodes if n.op == "call_function" and n.target not in CONVERTERS]
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: var() of one value, while tracing at length 1
def test_a_variance_over_the_sequence_is_refused_naming_the_line():
    class SeqVar(torch.nn.Module):
        block_size = 8

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, idx):
            return self.emb(idx) / self.emb(idx).var(1, keepdim=True)  # LINE: var over T

    from monologue_compile.frontend.module import from_module

    with pytest.raises(MonologueError, match=r"a variance over the sequence axis .* at fx node %var .*LINE: var over T"):
        trace(from_module(SeqVar()).build_module(), 8)


SOFTMAXES = {
    "amax": lambda s: (e := (s - s.amax(-1, keepdim=True)).exp()) / e.sum(-1, keepdim=True),
    "max_values_detached": lambda s: (e := torch.exp(s - s.max(dim=-1, keepdim=True)[0].detach())) / e.sum(
        dim=-1, keepdim=True),
    "no_shift": lambda s: s.exp() / s.exp().sum(-1, keepdim=True),
    "exp_of_log_softmax": lambda s: torch.log_softmax(s, dim=-1).exp(),
    "exp_of_functional_log_softmax": lambda s: torch.exp(torch.nn.functional.log_softmax(s, 3)),
}


class WrittenSoftmaxAttention(torch.nn.Module):
    """Attention whose softmax is written out, as "from scratch" tutorials write it."""

    def __init__(self, softmax):
        super().__init__()
        self.block_size, self.softmax = 16, softmax
        self.emb, self.qkv, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 24), torch.nn.Linear(8, 20)
        self.register_buffer("tril", torch.tril(torch.ones(16, 16)))

    def forward(self, idx):
        t = idx.shape[1]
        q, k, v = self.qkv(self.emb(idx)).view(1, t, 3, 2, 4).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1) / 2.0).masked_fill(self.tril[:t, :t] == 0, float("-inf"))
        return self.head((self.softmax(att) @ v).transpose(1, 2).reshape(1, t, 8))


@pytest.mark.parametrize("name", SOFTMAXES)
def test_a_written_out_softmax_of_attention_scores_becomes_the_attention_op(name):
    torch.manual_seed(0)
    g = lowered_matches(WrittenSoftmaxAttention(SOFTMAXES[name]).eval(), 16, 20)
    assert [n.op for n in g.nodes].count("attention") == 1
    assert not [n for n in g.nodes if n.op == "unary" and n.attrs["fn"] == "exp"]


class MovedAxesAttention(torch.nn.Module):
    """Attention whose heads are moved with movedim / swapaxes and whose keys are transposed with
    .mT, or whose scores are a bmm over heads folded into the batch, viewed back as (B, H, T, T)."""

    def __init__(self, spelling):
        super().__init__()
        self.block_size, self.spelling = 16, spelling
        self.emb, self.qkv, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 24), torch.nn.Linear(8, 20)

    def forward(self, idx):
        t = idx.shape[1]
        q, k, v = self.qkv(self.emb(idx)).unflatten(-1, (3, 2, 4)).unbind(2)  # (1, t, heads, 4) each
        if self.spelling == "bmm":
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
            att = torch.bmm(q.reshape(2, t, 4), k.reshape(2, t, 4).transpose(1, 2)).view(1, 2, t, t) / 2.0
        else:
            q, k, v = (x.movedim(2, 1) if self.spelling == "movedim" else x.swapaxes(1, 2) for x in (q, k, v))
            att = q @ k.mT / 2.0
        att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).tril().logical_not(), float("-inf"))
        return self.head((att.softmax(-1) @ v).movedim(1, 2).reshape(1, t, 8))


@pytest.mark.parametrize("spelling", ["movedim", "swapaxes", "bmm"])
def test_attention_with_moved_axes_or_folded_heads_becomes_the_attention_op(spelling):
    torch.manual_seed(0)
    g = lowered_matches(MovedAxesAttention(spelling).eval(), 16, 20)
    assert [n.op for n in g.nodes].count("attention") == 1


def test_a_written_out_softmax_elsewhere_is_softmax_and_other_quotients_of_exp_are_left_alone():
    class Quotients(torch.nn.Module):
        def forward(self, x):
            e = x.exp()
            soft = e / e.sum(-2, keepdim=True)  # along another axis: still a softmax
            other = e / (e.sum(-1, keepdim=True) + 1.0)  # not a softmax
            return soft + other

    x = torch.randn(1, 3, 5)
    ep = torch.export.export(Quotients(), (x,), strict=False)
    written_softmax(ep)
    assert [n.args[1] for n in ep.graph.nodes if n.target is aten._softmax.default] == [1]
    assert len([n for n in ep.graph.nodes if n.target is aten.exp.default]) == 1  # the other quotient's
    torch.testing.assert_close(ep.module()(x), Quotients()(x))


class MultiheadWithWeights(torch.nn.Module):
    """nn.MultiheadAttention called as most code calls it: need_weights left True, the averaged
    weights (a mean over the heads of the probabilities) returned and never read."""

    def __init__(self):
        super().__init__()
        self.block_size = 16
        self.emb, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 20)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, idx):
        x, t = self.emb(idx), idx.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=idx.device), 1)
        return self.head(x + self.attn(x, x, x, attn_mask=mask)[0])


def test_what_no_output_reads_is_not_lowered():
    from monologue_compile.frontend.module import from_module

    torch.manual_seed(0)
    model = MultiheadWithWeights().eval()
    ep = trace(from_module(model).build_module(), 16)
    assert not [n for n in ep.graph.nodes if n.target is aten.mean.dim]  # the weights' average
    g = lowered_matches(model, 16, 20)
    assert [n.op for n in g.nodes].count("attention") == 1


class CountedPositions(torch.nn.Module):
    """Positions counted from the ids' shape (`ones_like(ids).cumsum(1) - 1`): a constant of the
    length, which only reads the ids to learn their shape."""

    def __init__(self):
        super().__init__()
        self.block_size = 16
        self.emb, self.pos, self.head = torch.nn.Embedding(20, 8), torch.nn.Embedding(16, 8), torch.nn.Linear(8, 20)

    def forward(self, idx):
        return self.head(self.emb(idx) + self.pos(torch.ones_like(idx).cumsum(1) - 1))


def test_a_tensor_made_from_the_ids_shape_is_made_from_their_sizes():
    from monologue_compile.frontend.module import from_module

    ep = trace(from_module(CountedPositions()).build_module(), 16)
    assert not [n for n in ep.graph.nodes if n.target is aten.ones_like.default]
    assert [n.target for n in ep.graph.nodes if n.target is aten.full.default]
    lowered_matches(CountedPositions().eval(), 16, 20)
