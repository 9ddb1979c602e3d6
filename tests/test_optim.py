"""tagtune's AdamW and schedule against torch.optim.AdamW with LambdaLR, step by step."""

import pytest
import torch

from tagtune.training.optim import AdamW, LinearSchedule


def problem(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 5))
    data = [(torch.randn(8, 16), torch.randint(0, 5, (8,))) for _ in range(12)]
    return model, data


def groups(model):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def stepper(optimizer, schedule, rates: list):
    """One optimizer step, then one schedule step; the new rate is appended to ``rates``."""
    def step():
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    return step


def run(model, data, step, zero_grad):
    for x, y in data:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        step()
        zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_and_schedule_equal_torch(fused):
    warmup, total, lr = 3, 12, 1e-2

    def factor(step):
        return step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))

    model, data = problem(0)
    ref_opt = torch.optim.AdamW(groups(model), lr=lr, fused=fused, foreach=False if not fused else None)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, factor)
    rates = []
    expected = run(model, data, stepper(ref_opt, ref_sched, rates), ref_opt.zero_grad)

    model, data = problem(0)
    opt = AdamW(groups(model), lr=lr, fused=fused)
    sched = LinearSchedule(opt, lr, warmup, total)
    ours = []
    got = run(model, data, stepper(opt, sched, ours), opt.zero_grad)
    assert ours == pytest.approx(rates, abs=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a, p) for a, p in zip(got, problem(0)[0].parameters()))  # it did train


def test_state_dict_round_trip_continues_identically():
    model, data = problem(1)
    opt = AdamW(groups(model), lr=1e-2)
    sched = LinearSchedule(opt, 1e-2, 2, 12)
    run(model, data[:5], stepper(opt, sched, []), opt.zero_grad)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = {"state": {i: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()},
                 "lrs": opt.state_dict()["lrs"]}
    saved_sched = sched.state_dict()
    straight = run(model, data[5:], stepper(opt, sched, []), opt.zero_grad)

    model2, _ = problem(1)
    model2.load_state_dict(saved_model)
    opt2 = AdamW(groups(model2), lr=1e-2)
    opt2.load_state_dict(saved_opt)
    sched2 = LinearSchedule(opt2, 1e-2, 2, 12)
    sched2.load_state_dict(saved_sched)
    resumed = run(model2, data[5:], stepper(opt2, sched2, []), opt2.zero_grad)
    for a, b in zip(resumed, straight):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [0.05, 100.0])  # every step clipped; none
def test_clipping_inside_the_step_equals_clip_grad_norm(fused, max_norm):
    model, data = problem(1)
    ref_opt = torch.optim.AdamW(groups(model), lr=1e-2, fused=fused, foreach=False if not fused else None)
    norms = []

    def ref_step():
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm)))
        ref_opt.step()

    expected = run(model, data, ref_step, ref_opt.zero_grad)
    model, data = problem(1)
    opt = AdamW(groups(model), lr=1e-2, fused=fused)
    got = run(model, data, lambda: opt.step(max_grad_norm=max_norm), opt.zero_grad)
    assert (min(norms) > max_norm) if max_norm < 1 else (max(norms) < max_norm)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_row_gradients_give_the_dense_updates():
    """An embedding table kept by rows (sparse lookups into a dense gradient zeroed where touched)
    trains exactly as with dense gradients, steps and clipping included."""
    def make(seed):
        torch.manual_seed(seed)
        table = torch.nn.Embedding(50, 6)
        head = torch.nn.Linear(6, 3)
        return table, head, [(torch.randint(0, 50, (7,)), torch.randint(0, 3, (7,))) for _ in range(6)]

    results = []
    for rows in (False, True):
        table, head, data = make(0)
        opt = AdamW([{"params": [table.weight, head.weight], "weight_decay": 0.01},
                     {"params": [head.bias], "weight_decay": 0.0}], lr=1e-2)
        if rows:
            opt.keep_row_gradients(table)
        for ids, y in data:
            for half in (slice(0, 4), slice(4, 7)):  # two lookups accumulate before each step
                torch.nn.functional.cross_entropy(head(table(ids[half])), y[half]).backward()
            opt.step(max_grad_norm=0.5)
            opt.zero_grad()
        assert (table.weight.grad is not None and not table.weight.grad.is_sparse) == rows
        results.append([p.detach().clone() for p in (table.weight, head.weight, head.bias)])
    assert table.weight.grad.abs().max() == 0  # zeroed after the last step
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
