import numpy as np
import scipy.sparse as sp
import pytest
import torch

from skicon._training import (ConvergenceStop, CosineSchedule, FusedAdam, GainsSGD, RowSampler, Trainer,
                              batched_forward, check_callbacks)
from skicon._utils import resolve_device, seed_from_random_state, torch_generator
from skicon.mappers import MLP, Table, make_mapper


def _quadratic_loss(module, batch, teacher):
    return ((module(batch) - 1.0) ** 2).mean()


def _trainer(**kw):
    module = Table(torch.zeros(20, 2))
    args = dict(n_samples=20, batch_size=5, n_steps=200, learning_rate=0.1, random_state=0)
    args.update(kw)
    return Trainer(module, _quadratic_loss, **args), module


def test_trainer_minimises_and_records_history():
    trainer, module = _trainer()
    history = trainer.run()
    # one log every LOG_EVERY (50) iterations: the mean loss of the 50 batches since the last one
    assert trainer.n_iter == 200 and len(history) == 4 and trainer.history_iterations == [50, 100, 150, 200]
    assert history[-1] < 1e-3 < history[0]
    assert torch.allclose(module.weight, torch.ones(20, 2), atol=0.05)


def test_batches_cover_each_epoch_and_are_seeded():
    a, _ = _trainer()
    b, _ = _trainer()
    batches_a = [a.sample_batch() for _ in range(4)]
    batches_b = [b.sample_batch() for _ in range(4)]
    assert all((x == y).all() for x, y in zip(batches_a, batches_b))
    assert sorted(torch.cat(batches_a).tolist()) == list(range(20))


def test_callback_stops_training():
    seen = []

    def stop_at_5(it, loss, est):
        seen.append(it)
        return it == 5

    trainer, _ = _trainer(callbacks=[stop_at_5], log_every=1)
    trainer.run()
    # iterations are counted from 1: the callback sees how many steps are done
    assert trainer.n_iter == 5 and seen == [1, 2, 3, 4, 5]


def test_callbacks_and_logs_every_log_every_iterations_and_at_the_end():
    seen, per_step = [], []
    trainer, _ = _trainer(n_steps=120, callbacks=lambda it, loss, est: seen.append((it, loss)),
                          hooks=[lambda tr, loss: per_step.append(loss)])
    trainer.run()
    assert [it for it, _ in seen] == [50, 100, 120] == trainer.history_iterations
    # each log is the mean of the per-iteration losses of its window; hooks see every iteration
    assert len(per_step) == 120
    windows = [per_step[:50], per_step[50:100], per_step[100:]]
    assert [loss for _, loss in seen] == pytest.approx([np.mean(w) for w in windows], rel=1e-12)


def test_objective_may_skip_the_loss_between_logs():
    module = Table(torch.zeros(3, 1, dtype=torch.float64))
    asked = []

    def objective(m, batch, teacher):
        asked.append(trainer.wants_loss)
        m.weight.grad = m.weight.detach() - 1.0
        return torch.tensor(float(((m.weight.detach() - 1.0) ** 2).sum())) if trainer.wants_loss else None

    trainer = Trainer(module, objective, n_steps=7, optimizer="sgd", learning_rate=0.1, log_every=3)
    history = trainer.run()
    assert asked == [False, False, True, False, False, True, True]
    assert trainer.history_iterations == [3, 6, 7] and len(history) == 3


def test_nan_loss_raises_clear_error():
    def bad(module, batch, teacher):
        return module(batch).sum() * float("nan")

    trainer = Trainer(Table(torch.zeros(4, 1)), bad, n_samples=4, batch_size=2, n_steps=3)
    with pytest.raises(FloatingPointError, match="learning_rate"):
        trainer.run()


def test_ema_teacher_lags_student():
    trainer, module = _trainer(ema=0.9, n_steps=5)
    trainer.run()
    assert trainer.teacher is not module
    assert not torch.allclose(trainer.teacher.weight, module.weight)
    assert not trainer.teacher.weight.requires_grad


def test_bad_optimizer_schedule_ema_and_callbacks():
    for kw, match in [({"optimizer": "rmsprop"}, "optimizer"), ({"schedule": "zigzag"}, "schedule"),
                      ({"ema": 1.5}, "ema")]:
        trainer, _ = _trainer(**kw)
        with pytest.raises(ValueError, match=match):
            trainer.run()
    with pytest.raises(TypeError, match="callbacks"):
        check_callbacks([1])


def test_convergence_stop():
    stop = ConvergenceStop(patience=3, tol=0.0)
    assert [stop(i, v, None) for i, v in enumerate([5, 4, 4, 4, 4])] == [False, False, False, False, True]


def test_mappers():
    assert make_mapper("table", 3, 2, n_samples=7).weight.shape == (7, 2)
    mlp = make_mapper("mlp", 3, 2, hidden=(4, 5))
    assert isinstance(mlp, MLP) and mlp(torch.zeros(6, 3)).shape == (6, 2)
    a = make_mapper("linear", 3, 2, random_state=0)
    b = make_mapper("linear", 3, 2, random_state=0)
    assert torch.equal(a.weight, b.weight)
    custom = make_mapper(lambda n_in, n_out: torch.nn.Linear(n_in, n_out, bias=False), 3, 2)
    assert custom.bias is None
    with pytest.raises(ValueError, match="mapper"):
        make_mapper("transformer", 3, 2)
    with pytest.raises(TypeError, match="nn.Module"):
        make_mapper(lambda n_in, n_out: "not a module", 3, 2)


def test_batched_forward_matches_direct():
    lin = torch.nn.Linear(3, 2)
    X = np.random.RandomState(0).randn(10, 3)
    out = batched_forward(lin, X, batch_size=3)
    with torch.no_grad():
        assert np.allclose(out, lin(torch.tensor(X, dtype=torch.float32)).double().numpy(), atol=1e-6)


def test_utils():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(TypeError):
        resolve_device(3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
    assert seed_from_random_state(5) == 5
    g1, g2 = torch_generator(3), torch_generator(3)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


@pytest.mark.parametrize("optimizer,fused", [("adam", True), ("adamw", True), ("sgd", False)])
def test_adam_steps_are_fused_on_cpu(optimizer, fused):
    # The fused kernel is the same update rule as the per-tensor one, in one pass per step.
    trainer, _ = _trainer()
    trainer.optimizer = optimizer
    opt, _ = trainer.make_optimizer()
    assert isinstance(opt, FusedAdam) is fused
    trainer.run()
    assert trainer.history[-1] < trainer.history[0]


@pytest.mark.parametrize("n_steps", [1, 7, 60])
@pytest.mark.parametrize("name,weight_decay", [("Adam", 0.0), ("Adam", 1e-2), ("AdamW", 1e-2)])
def test_fused_adam_and_cosine_schedule_equal_torch_bit_for_bit(name, weight_decay, n_steps):
    # FusedAdam/CosineSchedule replace torch.optim.Adam(fused=True)/CosineAnnealingLR to avoid
    # torch's optimiser import; the trajectory must be the same to the last bit.
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    ref = getattr(torch.optim, name)(nets[0].parameters(), lr=0.05, weight_decay=weight_decay, fused=True)
    ours = FusedAdam(nets[1].parameters(), lr=0.05, weight_decay=weight_decay, decoupled=name == "AdamW")
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=n_steps), CosineSchedule(ours, n_steps)]
    X = torch.randn(20, 5)
    for _ in range(n_steps):
        for net, opt, sched in zip(nets, (ref, ours), scheds):
            opt.zero_grad()
            net(X).pow(2).sum().backward()
            opt.step()
            sched.step()
        assert ref.param_groups[0]["lr"] == ours.param_groups[0]["lr"]
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


def test_a_minibatch_fit_does_not_import_torch_dynamo():
    # torch.optim.Optimizer's constructor imports torch._dynamo (about 1 s in a fresh process,
    # paid again by every joblib worker); the Trainer's Adam and cosine schedule avoid it.
    import subprocess
    import sys

    code = ("import sys\nfrom sklearn.datasets import make_blobs\nfrom skicon import ICONClustering\n"
            "X, _ = make_blobs(200, 5, centers=3, random_state=0)\n"
            "ICONClustering(3, n_init=2, max_iter=60, random_state=0).fit(X)\n"
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_full_batch_lbfgs_counts_one_iteration_per_optimiser_step():
    # minimise ||w - 3||^2: LBFGS with a line search solves it in a couple of iterations
    module = Table(torch.zeros(4, 2, dtype=torch.float64))
    seen = []
    trainer = Trainer(module, lambda m, b, t: ((m.weight - 3.0) ** 2).sum(), n_steps=5, optimizer="lbfgs",
                      learning_rate=1.0, optimizer_options={"max_iter": 1, "line_search_fn": "strong_wolfe"},
                      callbacks=lambda it, loss, est: seen.append(it), log_every=1)
    history = trainer.run()
    assert trainer.n_iter == len(history) == 5 and seen == [1, 2, 3, 4, 5]
    assert history[-1] < 1e-12 < history[0]


def test_analytic_gradient_objective_with_phases_and_gains():
    # an objective that writes its own gradient (as the t-SNE engine does) and reads the phase
    module = Table(torch.full((5, 2), 4.0, dtype=torch.float64))
    factors = []

    def objective(m, batch, teacher):
        factor = trainer.phase["scale"]
        factors.append(factor)
        m.weight.grad = factor * m.weight.detach().clone()
        return torch.as_tensor(0.5 * factor * float((m.weight.detach() ** 2).sum()))

    phases = [{"n_steps": 3, "scale": 2.0, "optimizer": {"momentum": 0.0}},
              {"n_steps": 4, "scale": 1.0, "optimizer": {"momentum": 0.5}}]
    trainer = Trainer(module, objective, n_steps=7, optimizer="gains", learning_rate=0.1, phases=phases,
                      optimizer_options={"recenter": False}, log_every=1)
    history = trainer.run()
    assert factors == [2.0] * 3 + [1.0] * 4
    assert trainer.opt.param_groups[0]["momentum"] == 0.5
    assert len(history) == 7 and history[-1] < history[0]


def test_gains_optimizer_grows_gains_against_a_steady_gradient_and_caps_steps():
    Y = torch.zeros(2, 2, requires_grad=True)
    opt = GainsSGD([Y], lr=100.0, momentum=0.0, max_step_norm=1.0, recenter=False)
    for _ in range(3):
        Y.grad = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        opt.step()
    # the first step (no previous update) shrinks the gains to 0.8 + 0.01; where the gradient
    # never flipped they then grew by 0.2 per step, where it is zero they kept shrinking
    # (g -> 0.8 g + 0.01: 0.81, 0.658, 0.5364); each step was capped to length 1
    shrunk = 0.8 * (0.8 * 0.81 + 0.01) + 0.01
    assert torch.allclose(opt.state[Y]["gains"], torch.tensor([[1.21, shrunk], [shrunk, 1.21]]))
    assert torch.allclose(Y.detach(), torch.tensor([[-3.0, 0.0], [0.0, 3.0]]))


def test_divergence_names_the_fix():
    module = Table(torch.ones(3, 1))
    trainer = Trainer(module, lambda m, b, t: (m.weight ** 2).sum() * 1e300 * 1e300, n_steps=2, desc="Est")
    with pytest.raises(FloatingPointError, match="Est diverged.*Lower learning_rate"):
        trainer.run()


def test_row_sampler_draws_each_row_in_proportion_and_flags_empty_rows():
    P = sp.csr_matrix(np.array([[0, 0.25, 0.75], [0, 0, 0], [0.5, 0.5, 0]]))
    sampler = RowSampler(P, 0)
    draws = sampler.sample(np.zeros(20000, dtype=int))
    frac = np.bincount(draws, minlength=3) / len(draws)
    # binomial standard error at 20,000 draws is about 0.003: 5 sigma
    assert frac[0] == 0 and abs(frac[1] - 0.25) < 0.016 and abs(frac[2] - 0.75) < 0.016
    assert sampler.sample([1]).tolist() == [-1] and sampler.empty.tolist() == [False, True, False]
    assert set(sampler.sample(np.full(1000, 2)).tolist()) == {0, 1}
