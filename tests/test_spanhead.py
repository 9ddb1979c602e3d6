"""The span head: shapes and state-dict names, its split dense product against the plain
concatenation, gradients by finite differences, the loss against a per-candidate loop, bf16
hidden states, the label prior of init_bias, and a small synthetic task it must learn."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tagtune.data.align import IGNORE
from tagtune.models.spanhead import SpanHead, span_loss, span_probabilities


def candidates(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of every candidate of n units and widths below k, ordered by i then j."""
    pairs = [(i, j) for i in range(n) for j in range(i, min(n, i + k))]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


def stream(n: int, tokens_per_unit: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last token of each of n units in a stream [CLS] units [SEP]."""
    sizes = torch.tensor(tokens_per_unit[:n])
    last = torch.cumsum(sizes, 0)  # position of each unit's last token, after [CLS] at 0
    return last - sizes + 1, last


def reference_logits(head: SpanHead, hidden, start_token, end_token, width) -> torch.Tensor:
    """The head as its docstring writes it, one candidate at a time: the concatenation of the
    two end states and the width embedding through dense, GELU, LayerNorm, classifier."""
    rows = []
    for s, e, w in zip(start_token.tolist(), end_token.tolist(), width.tolist()):
        features = torch.cat([hidden[s], hidden[e], head.width_embeddings.weight[w]])
        z = head.dense(features)
        rows.append(head.classifier(head.norm(F.gelu(z))))
    return torch.stack(rows)


def test_shapes_and_state_dict_names():
    head = SpanHead(hidden_size=8, num_labels=4, max_width=3, width_size=5)
    assert {name: tuple(t.shape) for name, t in head.state_dict().items()} == {
        "width_embeddings.weight": (3, 5),
        "dense.weight": (8, 21), "dense.bias": (8,),
        "norm.weight": (8,), "norm.bias": (8,),
        "classifier.weight": (4, 8), "classifier.bias": (4,),
    }
    i, j = candidates(6, 3)
    assert len(i) == sum(min(3, 6 - a) for a in range(6)) == 15
    logits = head(torch.randn(10, 8), i + 1, j + 1, j - i)
    assert logits.shape == (15, 4) and logits.dtype == torch.float32
    empty = torch.zeros(0, dtype=torch.long)
    assert head(torch.randn(10, 8), empty, empty, empty).shape == (0, 4)
    assert span_loss(head(torch.randn(10, 8), empty, empty, empty), empty).item() == 0.0


def test_initialisation_is_hf_heads():
    torch.manual_seed(0)
    head = SpanHead(hidden_size=64, num_labels=6, max_width=8)
    for weight in (head.dense.weight, head.classifier.weight, head.width_embeddings.weight):
        assert abs(weight.mean().item()) < 0.005 and weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not head.dense.bias.any() and not head.classifier.bias.any() and not head.norm.bias.any()
    assert (head.norm.weight == 1).all()


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="none"):
        SpanHead(8, num_labels=1, max_width=3)
    head = SpanHead(8, num_labels=3, max_width=3)
    index = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(tokens, 8\)"):
        head(torch.randn(5, 7), index, index, index)
    with pytest.raises(ValueError, match="alike"):
        head(torch.randn(5, 8), index, index, index[:1])


def test_split_product_matches_the_concatenation():
    torch.manual_seed(1)
    head = SpanHead(hidden_size=12, num_labels=5, max_width=4, width_size=6).eval()
    with torch.no_grad():  # away from the near-zero start, so every part of dense counts
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    i, j = candidates(7, 4)
    start, last = stream(7, [1, 2, 1, 3, 1, 1, 2])
    hidden = torch.randn(int(last[-1]) + 2, 12)
    args = (hidden, start[i], last[j], j - i)
    torch.testing.assert_close(head(*args), reference_logits(head, *args))


def test_gradients_by_finite_differences():
    """Gradients of the mean loss w.r.t. the hidden states and every parameter of a tiny float64
    head (no dropout), against central differences. Tokens start several candidates and end
    others, so the gathers' backward must sum."""
    torch.manual_seed(2)
    head = SpanHead(hidden_size=4, num_labels=3, max_width=3, width_size=2, dropout=0.0).double()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.7)
    i, j = candidates(4, 3)
    start, last = stream(4, [1, 2, 1, 1])
    labels = torch.tensor([0, 1, 2, 0, 2, 1, 1, 0, 2])[: len(i)]
    labels[3] = IGNORE
    names = [name for name, _ in head.named_parameters()]
    hidden = torch.randn(int(last[-1]) + 2, 4, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in head.parameters()]

    def loss(hidden, *params):
        logits = functional_call(head, dict(zip(names, params)), (hidden, start[i], last[j], j - i))
        return span_loss(logits, labels)

    assert torch.autograd.gradcheck(loss, (hidden, *params), eps=1e-6, atol=1e-6)


def test_loss_is_the_per_candidate_cross_entropy():
    torch.manual_seed(3)
    logits = torch.randn(11, 4) * 3
    labels = torch.randint(0, 4, (11,))
    labels[[2, 7]] = IGNORE
    per = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        if y == IGNORE:
            per.append(0.0)
            continue
        top = max(row)
        per.append(top + math.log(sum(math.exp(v - top) for v in row)) - row[y])
    torch.testing.assert_close(span_loss(logits, labels, "none"), torch.tensor(per))
    assert span_loss(logits, labels, "sum").item() == pytest.approx(sum(per), rel=1e-6)
    assert span_loss(logits, labels).item() == pytest.approx(sum(per) / 9, rel=1e-6)
    # A batch split in two (accumulation, or two processes), each share summed and divided by the
    # whole batch's count, adds up to the batch's mean.
    halves = sum(span_loss(logits[a:b], labels[a:b], "sum") / 9 for a, b in ((0, 5), (5, 11)))
    assert halves.item() == pytest.approx(span_loss(logits, labels).item(), rel=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        span_loss(logits, labels, "max")


def test_bf16_hidden_states_give_fp32_logits():
    torch.manual_seed(4)
    head = SpanHead(hidden_size=32, num_labels=5, max_width=4).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.2)
    i, j = candidates(20, 4)
    hidden = torch.randn(22, 32)
    args = (i + 1, j + 1, j - i)
    low = head(hidden.bfloat16(), *args)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, head(hidden.bfloat16().float(), *args))  # the head itself stays fp32
    torch.testing.assert_close(low, head(hidden, *args), atol=0.05, rtol=0.02)
    probs = span_probabilities(low.bfloat16())
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(i)))


def test_init_bias_gives_the_label_frequencies():
    head = SpanHead(hidden_size=8, num_labels=4, max_width=3)
    with torch.no_grad():
        head.classifier.weight.zero_()  # the rest of the head outputs 0
    i, j = candidates(5, 3)
    hidden = torch.randn(7, 8)
    counts = [900, 30, 0, 70]
    head.init_bias(counts)
    expected = torch.tensor([901, 31, 1, 71]) / 1004
    torch.testing.assert_close(span_probabilities(head(hidden, i + 1, j + 1, j - i)), expected.expand(len(i), 4))
    head.init_bias([5, 1, 2, 2], smoothing=0.0)
    probs = span_probabilities(head(hidden, i + 1, j + 1, j - i))
    torch.testing.assert_close(probs, torch.tensor([.5, .1, .2, .2]).expand(len(i), 4))
    with pytest.raises(ValueError, match="each of the 4 labels"):
        head.init_bias([1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        head.init_bias([5, 0, 2, 2], smoothing=0.0)


def synthetic(n: int, k: int, size: int, generator) -> tuple:
    """Random hidden states of n one-token units whose candidates are labelled by their ends and
    width: an entity where the signs of feature 0 at the start and at the end differ, "none"
    where they agree (an exclusive or of the two ends, which no sum of a start, an end and a
    width score can tell); its label 1-4 from the width's parity and the sign of the start's
    feature 1."""
    hidden = torch.randn(n + 2, size, generator=generator)
    hidden[:, :2] = torch.randint(0, 2, (n + 2, 2), generator=generator) * 2.0 - 1.0
    i, j = candidates(n, k)
    differ = hidden[i + 1, 0] != hidden[j + 1, 0]
    width = j - i
    labels = torch.where(differ, 1 + width % 2 + 2 * (hidden[i + 1, 1] > 0).long(), 0)
    return hidden, i + 1, j + 1, width, labels


def train(head, forward, data, steps: int = 300) -> None:
    """``steps`` of Adam (lr 1e-2) on the candidates of ``data`` in turn."""
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(steps):
        hidden, start, end, width, labels = data[step % len(data)]
        loss = span_loss(forward(hidden, start, end, width), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def accuracy(forward, data) -> float:
    hidden, start, end, width, labels = data
    with torch.no_grad():
        predicted = span_probabilities(forward(hidden, start, end, width)).argmax(-1)
    return (predicted == labels).float().mean().item()


def test_learns_a_synthetic_task():
    generator = torch.Generator().manual_seed(5)
    data = [synthetic(40, 4, 16, generator) for _ in range(4)]
    held_out = synthetic(40, 4, 16, generator)
    torch.manual_seed(5)
    head = SpanHead(hidden_size=16, num_labels=5, max_width=4, width_size=8, dropout=0.0)
    train(head, head, data)
    assert accuracy(head, held_out) >= 0.99
    # The hidden layer is what learns it: one linear layer over the same concatenation cannot.
    linear = torch.nn.Linear(16 + 16 + 8, 5)

    def flat(hidden, start, end, width):
        return linear(torch.cat([hidden[start], hidden[end], head.width_embeddings.weight[width].detach()], 1))

    train(linear, flat, data)
    assert accuracy(flat, held_out) < 0.8
