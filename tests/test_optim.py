"""tagtune's AdamW and schedule against torch.optim.AdamW with LambdaLR, step by step."""

import pytest
import torch

from tagtune.optim import AdamW, LinearSchedule


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
