"""Run every compiled op under the CPU capability this process loaded and save what it computed.

    RNNOFRNNS_CPU_CAPABILITY=avx2 python tests/capability_probe.py OUT.pt

tests/test_cpu_capability.py runs this once per capability the machine has (one build of the
kernels per process) and compares the files. For every case it checks, in this process, the
cpu backend against the dense reference in float64 (outputs and every gradient) and that one
and two threads give bitwise the same result; it saves the float32 results, so that the
caller can compare the capabilities with each other. Exits 1 with one line per failure.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Tuple

import torch

import rnnofrnns
from rnnofrnns.ops import ensemble, gated_paths, gated_paths_reference, modular_rnn, modular_rnn_reference

Case = Callable[[str, torch.dtype], List[torch.Tensor]]


def _rand(g: torch.Generator, *shape: int, s: float = 1.0) -> torch.Tensor:
    return s * torch.randn(*shape, generator=g, dtype=torch.float64)


def _star(p: int) -> List[Tuple[int, int]]:
    return [(p - 1, j) for j in range(p - 1)] + [(j, p - 1) for j in range(p - 1)]


def modular_case(T: int, B: int, p: int, n: int, pairs, *, step: str, form: str, nl: str,
                 per_area_alpha: bool) -> Case:
    """Outputs and the gradients of drive, W, L, h0 (and alpha when it is per area)."""
    g = torch.Generator().manual_seed(p * 1000 + n)
    k = len(pairs)
    base = [_rand(g, T, B, p * n), _rand(g, p, n, n, s=0.9 / n ** 0.5),
            _rand(g, k, n, n, s=0.45 / (n * max(1, k / p)) ** 0.5), _rand(g, B, p * n)]
    idx = torch.tensor(pairs, dtype=torch.int64)
    alpha0 = torch.linspace(0.2, 0.8, p, dtype=torch.float64) if per_area_alpha else None
    weights = torch.randn(T, B, p * n, generator=g, dtype=torch.float64)

    def run(backend: str, dtype: torch.dtype) -> List[torch.Tensor]:
        drive, W, L, h0 = [t.to(dtype).requires_grad_() for t in base]
        alpha = alpha0.to(dtype).requires_grad_() if per_area_alpha else 0.5
        kw = dict(alpha=alpha, nonlinearity=nl, form=form, feedback_step=step)
        out = (modular_rnn_reference(drive, W, L, idx, h0, **kw) if backend == "reference"
               else modular_rnn(drive, W, L, idx, h0, backend="cpu", **kw))
        inputs = [drive, W, L, h0] + ([alpha] if per_area_alpha else [])
        return [out.detach()] + list(torch.autograd.grad((out * weights.to(dtype)).sum(), inputs))

    return run


def gated_case(B: int, P: int, D_in: int, D_out: int, gates: str) -> Case:
    g = torch.Generator().manual_seed(B * P)
    c_shape = {"path": (P,), "sample": (B, P), "neuron": (B, P, D_out)}[gates]
    base = [_rand(g, B, D_in), _rand(g, P, D_out, D_in, s=D_in ** -0.5), _rand(g, *c_shape)]
    weights = torch.randn(B, D_out, generator=g, dtype=torch.float64)

    def run(backend: str, dtype: torch.dtype) -> List[torch.Tensor]:
        x, W, c = [t.to(dtype).requires_grad_() for t in base]
        y = gated_paths(x, W, c, backend="cpu") if backend == "cpu" else gated_paths_reference(x, W, c)
        return [y.detach()] + list(torch.autograd.grad((y * weights.to(dtype)).sum(), (x, W, c)))

    return run


def ensemble_case(I: int, B: int, T: int, F: int, n: int, relu_hidden: bool, relu_out: bool) -> Case:
    """ensemble_drive, ensemble_readout_loss and ensemble_loss on one ensemble."""
    g = torch.Generator().manual_seed(I * 100 + n * 10 + F)
    x, y = _rand(g, I, B, T, F), _rand(g, I, B, T, F)
    params = [_rand(g, I, n, F, s=F ** -0.5), _rand(g, I, n, n, s=0.8 * n ** -0.5),
              _rand(g, I, n, F, s=n ** -0.5), _rand(g, I, F, s=0.1)]
    h = _rand(g, T, B, I * n)
    weights = torch.randn(T, B, I * n, generator=g, dtype=torch.float64)

    def run(backend: str, dtype: torch.dtype) -> List[torch.Tensor]:
        be = "cpu" if backend == "cpu" else "reference"
        Wx, Wh, Wy, b = [t.to(dtype).requires_grad_() for t in params]
        xd, yd, hd = x.to(dtype).requires_grad_(), y.to(dtype), h.to(dtype).requires_grad_()
        drive = ensemble.ensemble_drive(xd, Wx, backend=be)
        out = [drive.detach()] + list(torch.autograd.grad((drive * weights.to(dtype)).sum(), (xd, Wx)))
        rl = ensemble.ensemble_readout_loss(hd, Wy, b, yd, relu_out, backend=be)
        out += [rl.detach()] + list(torch.autograd.grad(rl.sum(), (hd, Wy, b)))
        loss = ensemble.ensemble_loss(xd.detach(), Wx, Wh, Wy, b, yd, relu_hidden, relu_out, backend=be)
        out += [loss.detach()] + list(torch.autograd.grad(loss.sum(), (Wx, Wh, Wy, b)))
        return out

    return run


CASES: Dict[str, Case] = {
    # n = 32 and 16: the padded layout is the tensors' own under every width; odd B leaves a
    # partial group of rows; n = 13, 11: padded.
    "euler-star-hopfield-relu": modular_case(24, 19, 5, 32, _star(5), step="euler", form="hopfield", nl="relu",
                                             per_area_alpha=False),
    "euler-random-rate-tanh": modular_case(17, 7, 4, 13, [(0, 1), (2, 0), (3, 2), (1, 3)], step="euler",
                                           form="rate", nl="tanh", per_area_alpha=True),
    "cayley-star-rate-relu": modular_case(15, 9, 5, 16, _star(5), step="cayley", form="rate", nl="relu",
                                          per_area_alpha=True),
    "cayley-star-hopfield-tanh-fixed-alpha": modular_case(12, 10, 4, 32, _star(4), step="cayley",
                                                          form="hopfield", nl="tanh", per_area_alpha=False),
    "cayley-dense-hopfield-identity": modular_case(11, 5, 3, 11, [(i, j) for i in range(3) for j in range(3) if i != j],
                                                   step="cayley", form="hopfield", nl="identity",
                                                   per_area_alpha=True),
    "gated-path": gated_case(13, 3, 37, 29, "path"),
    "gated-sample": gated_case(13, 4, 40, 33, "sample"),
    "gated-neuron": gated_case(6, 2, 19, 35, "neuron"),
    "ensemble-n5-F8-linear": ensemble_case(6, 21, 9, 8, 5, False, False),
    "ensemble-n10-F8-relu": ensemble_case(3, 17, 7, 8, 10, True, True),
    "ensemble-n2-F8-relu-out": ensemble_case(5, 9, 6, 8, 2, False, True),
    "ensemble-n7-F3-relu": ensemble_case(4, 11, 5, 3, 7, True, False),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def main(argv: List[str]) -> int:
    torch.set_flush_denormal(True)
    failures = []
    saved: Dict[str, object] = {"capability": rnnofrnns.cpu_capability()}
    for name, case in CASES.items():
        ref = case("reference", torch.float64)
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(case("cpu", torch.float32))
        for i, (a, b) in enumerate(zip(*runs)):
            if not torch.equal(a, b):
                failures.append(f"{name}: output {i} differs between 1 and 2 threads")
        for i, (a, r) in enumerate(zip(runs[0], ref)):
            if not torch.isfinite(a).all() or rel_err(a, r) > 1e-4:
                failures.append(f"{name}: output {i} is {rel_err(a, r):.1e} from the float64 reference")
        saved[name] = runs[0]
    torch.save(saved, argv[1])
    for f in failures:
        print(f"[{saved['capability']}] {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
