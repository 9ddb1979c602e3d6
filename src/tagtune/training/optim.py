"""AdamW and the linear warm-up/decay schedule, without torch.optim.

torch.optim's optimizers import torch._dynamo (and with it sympy and some 800 modules) when the
first one is built: about 70 MB of resident memory and a second of start-up that a fine-tuning
run on a CPU never uses. The update here is the same: one fused kernel per parameter group
(``torch._fused_adamw_``, as ``torch.optim.AdamW(fused=True)`` calls it), with a plain tensor
fallback for builds that lack it; tests/test_optim.py checks both against torch.optim.AdamW.
"""

from __future__ import annotations

import math

import torch


class AdamW:
    """AdamW (Loshchilov & Hutter; decoupled weight decay) over parameter groups
    ``[{"params": [...], "weight_decay": w}, ...]``; every group shares ``lr``, which the
    schedule sets before each step."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.groups = [{"params": [p for p in g["params"] if p.requires_grad], "weight_decay": g.get("weight_decay", 0.0),
                        "lr": lr} for g in groups]
        self.betas, self.eps = betas, eps
        self.fused = hasattr(torch, "_fused_adamw_") if fused is None else fused
        self.state: dict[int, dict[str, torch.Tensor]] = {}  # by position over all groups' parameters
        self.rows: dict[int, list[torch.Tensor | None]] = {}  # keep_row_gradients: by id(weight), rows touched

    def parameters(self):
        return [p for g in self.groups for p in g["params"]]

    def _state(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if i not in self.state:
            self.state[i] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                             "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                             "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return self.state[i]

    @torch.no_grad()
    def step(self, max_grad_norm: float | None = None) -> None:
        """One update from the parameters' gradients. With ``max_grad_norm``, the gradients are
        first scaled down so their total norm is at most that (torch.nn.utils.clip_grad_norm_'s
        rule; the scaled gradients are left in ``.grad``): inside the fused kernel, which saves
        a pass over every gradient (about 2 ms of a 350 ms MiniLM step on 2 CPU cores)."""
        beta1, beta2 = self.betas
        grad_scale = self._grad_scale(max_grad_norm) if max_grad_norm else None
        i = 0
        for group in self.groups:
            params, grads, states = [], [], []
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
                    states.append(self._state(i, p))
                i += 1
            if not params:
                continue
            steps = [s["step"] for s in states]
            exp_avgs = [s["exp_avg"] for s in states]
            exp_avg_sqs = [s["exp_avg_sq"] for s in states]
            torch._foreach_add_(steps, 1)
            if self.fused:
                torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1,
                                    beta2=beta2, weight_decay=group["weight_decay"], eps=self.eps, amsgrad=False,
                                    maximize=False, grad_scale=grad_scale)
                continue
            if grad_scale is not None:
                torch._foreach_div_(grads, grad_scale)
            for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
                t = float(t)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(self.eps)
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))

    def _grad_scale(self, max_norm: float) -> torch.Tensor | None:
        """What to divide the gradients by for a total norm of at most ``max_norm``: at least 1
        (a 0-d tensor, so nothing waits on its value); None without gradients."""
        grads = [self._nonzero_rows(p) for p in self.parameters() if p.grad is not None]
        if not grads:
            return None
        total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return torch.clamp((total + 1e-6) / max_norm, min=1.0)

    def keep_row_gradients(self, embedding: torch.nn.Embedding) -> None:
        """Keep the dense gradient of a large embedding table from step to step, filled from the
        sparse gradients of its lookups (``embedding.sparse`` is set) and zeroed only in the
        rows a step touched. The update is unchanged; what goes is a dense zero-filled table per
        step: for MiniLM's 30,522 x 384 words, 15 ms of a 350 ms step on 2 CPU cores became 2."""
        weight = embedding.weight
        embedding.sparse = True
        weight.grad = torch.zeros_like(weight)
        touched = self.rows.setdefault(id(weight), [])
        weight.register_hook(lambda grad: touched.append(grad._indices()[0] if grad.is_sparse else None))

    def _touched(self, p: torch.Tensor) -> torch.Tensor | None:
        """The rows of a table kept by rows that lookups touched since the last step (unique), or
        None where any row may be nonzero: a dense gradient came too, or ``p`` is not such a table."""
        touched = self.rows.get(id(p))
        if touched is None or any(rows is None for rows in touched):
            return None
        return torch.cat(touched).unique() if touched else torch.zeros(0, dtype=torch.long, device=p.device)

    def _nonzero_rows(self, p: torch.Tensor) -> torch.Tensor:
        """``p.grad``, or of a table kept by rows only its touched rows (the rest are zero, so the
        norm is the same)."""
        rows = self._touched(p)
        return p.grad if rows is None else p.grad.index_select(0, rows)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if id(p) in self.rows:  # keep_row_gradients: zero the rows touched since the last step
                rows = self._touched(p)
                if rows is None:  # a dense gradient came too
                    p.grad.zero_()
                else:
                    p.grad.index_fill_(0, rows, 0.0)
                self.rows[id(p)].clear()
            elif set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        return {"state": {i: dict(s) for i, s in self.state.items()}, "lrs": [g["lr"] for g in self.groups]}

    def load_state_dict(self, saved: dict) -> None:
        params = self.parameters()
        self.state = {}
        for i, s in saved["state"].items():
            p = params[int(i)]
            self.state[int(i)] = {k: v.to(p.device) for k, v in s.items()}
        for g, lr in zip(self.groups, saved["lrs"]):
            g["lr"] = lr


class LinearSchedule:
    """Linear warm-up from zero to ``lr`` over ``warmup`` steps, then linear decay to zero at
    ``total_steps`` (the schedule of transformers' get_linear_schedule_with_warmup). Sets the
    optimizer's rate for the coming step; ``step()`` after each optimizer step."""

    def __init__(self, optimizer: AdamW, lr: float, warmup: int, total_steps: int):
        self.optimizer, self.lr, self.warmup, self.total_steps = optimizer, lr, warmup, total_steps
        self.steps = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup))

    def _apply(self) -> None:
        for g in self.optimizer.groups:
            g["lr"] = self.lr * self.factor(self.steps)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.groups]

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, saved: dict) -> None:
        self.steps = saved["steps"]
        self._apply()
