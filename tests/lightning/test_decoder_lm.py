"""Acceptance of the decoder baseline on the embedded corpus, and fit-time bad input."""

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.token_store import TokenStore
from tests.cli.test_cli import EXP, mlpmem

STEPS, BATCH, SEQ = 300, 16, 128


def fit_args(store, run_dir, *extra):
    return ["fit", "--config", str(EXP / "trainer/cpu.yaml"), "--config", str(EXP / "model/decoder_200k.yaml"),
            "--data.token_store", str(store), "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH),
            "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false", *extra]


def unigram_perplexity(tokens: np.ndarray, vocab: int) -> float:
    """exp of the entropy of the split's own unigram distribution (float64)."""
    p = np.bincount(tokens, minlength=vocab).astype(np.float64) / len(tokens)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.slow  # 300 steps on the full embedded corpus: about 2 minutes on 2 cores
def test_smallest_decoder_learns(wiki_store, tmp_path):
    store = TokenStore(wiki_store)
    assert store.manifest["tokens"]["train"] > 500_000
    cli = run_cli(fit_args(wiki_store, tmp_path / "run", "--model.max_tokens", str(STEPS * BATCH * SEQ)))
    assert cli.trainer.global_step == STEPS
    val_ppl = float(cli.trainer.callback_metrics["val/ppl"])
    unigram = unigram_perplexity(np.asarray(store.split("train")), store.vocab_size)
    print(f"valid ppl {val_ppl:.1f}, unigram ppl of train {unigram:.1f}, vocab {store.vocab_size}")
    assert val_ppl < 0.1 * store.vocab_size
    assert val_ppl < 0.8 * unigram
    _assert_validation_is_the_brute_force_mean(wiki_store, tmp_path / "run")


def test_a_fit_writes_its_run_and_validation_is_the_brute_force_token_mean(small_store, tmp_path):
    """The learning acceptance above is slow; this short fit keeps its files and its brute-force check in CI."""
    run_cli(fit_args(small_store, tmp_path / "run", "--model.max_tokens", str(6 * BATCH * SEQ)))
    _assert_validation_is_the_brute_force_mean(small_store, tmp_path / "run")


def _assert_validation_is_the_brute_force_mean(store_dir, run_dir) -> None:
    """`validate`'s val/loss is the token-weighted mean NLL over every valid window, recomputed here by brute force."""
    from mlpmem_lightning.data.windows import TokenWindows
    from mlpmem_lightning.lightning.decoder_lm import DecoderLM
    from mlpmem_lightning.lightning.evaluation import token_nll

    for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "config.yaml", "metrics.csv"):
        assert (run_dir / name).is_file(), name
    store = TokenStore(store_dir)
    model = DecoderLM.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    windows = TokenWindows(store_dir / "valid.npy", SEQ, store.manifest["tokens"]["valid"])
    batch = windows.__getitems__(list(range(len(windows))))
    with torch.no_grad():
        nll = torch.cat([token_nll(model(x), y).double().flatten()
                         for x, y in zip(batch["input_ids"].split(64), batch["labels"].split(64))])
    val = run_cli(["validate"] + fit_args(store_dir, run_dir)[1:]
                  + ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    assert float(val.trainer.callback_metrics["val/loss"]) == pytest.approx(nll.mean().item(), rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--data.seq_len", "128", "--model.context", "64"], "exceeds the model's context"),
    (["--model.vocab_size", "100"], "vocab_size is 100"),
    (["--data.fingerprint", "0123456789abcdef"], "fingerprint"),
    (["--model.size", "tiny"], "unknown decoder size"),
])
def test_fit_bad_input(small_store, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        run_cli(fit_args(small_store, tmp_path / "run", "--model.max_tokens", "2048", *extra))


def test_fit_bad_input_exits_2_with_one_line(small_store, tmp_path):
    out = mlpmem(*fit_args(small_store, tmp_path / "run", "--model.vocab_size", "100"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("mlpmem: error: the model's vocab_size is 100")


class CrashAt(Callback):
    """Simulates a crash: raises when training reaches ``step`` (after the checkpoint before it)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_fit_is_deterministic_and_resumes(small_store, tmp_path):
    """Same seed -> bitwise-identical weights (with or without workers); a crashed fit re-run resumes
    from last.ckpt, continues the data order and ends with the uninterrupted run's weights."""
    import torch

    budget = ["--model.max_tokens", str(12 * BATCH * SEQ), "--trainer.val_check_interval", "0.5"]

    def weights(run):
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    run_cli(fit_args(small_store, tmp_path / "a", *budget))
    run_cli(fit_args(small_store, tmp_path / "b", *budget, "--data.num_workers", "1"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)

    crash = ["--trainer.callbacks+=tests.lightning.test_decoder_lm.CrashAt", "--trainer.callbacks.step", "8"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(fit_args(small_store, tmp_path / "c", *budget, *crash))
    assert torch.load(tmp_path / "c" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    resumed = run_cli(fit_args(small_store, tmp_path / "c", *budget))
    assert resumed.trainer.global_step == 12
    c = weights(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a)


class LossesSeen(Callback):
    """Each step's training loss as the step returned it."""

    seen: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        LossesSeen.seen[trainer.global_step - 1] = float(outputs["loss"])


def test_train_loss_is_logged_at_the_loggers_steps_with_that_steps_value(small_store, tmp_path, monkeypatch):
    """Training metrics are logged only on the steps the logger writes (a `self.log` costs more host time than
    a small rung's step on a GPU); what is written there is that step's loss, never a stale one."""
    import csv

    import lightning as L

    calls, log = [], L.LightningModule.log

    def spy(self, name, *args, **kwargs):
        if name == "train/loss":
            calls.append(self.global_step)
        return log(self, name, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "log", spy)
    LossesSeen.seen = {}
    run = tmp_path / "run"
    run_cli(fit_args(small_store, run, "--model.max_tokens", str(8 * BATCH * SEQ), "--trainer.log_every_n_steps",
                     "3", "--trainer.val_check_interval", "1.0", "--trainer.limit_val_batches", "1",
                     "--trainer.callbacks+=tests.lightning.test_decoder_lm.LossesSeen"))
    with open(run / "metrics.csv", newline="") as f:
        logged = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert sorted(logged) == [2, 5] and calls == [2, 5]
    assert sorted(LossesSeen.seen) == list(range(8))
    for step, loss in logged.items():
        assert loss == pytest.approx(LossesSeen.seen[step], rel=1e-6)


def test_clipping_hook_clips_the_global_norm_without_lightning_refusing_fused_adamw():
    from types import SimpleNamespace

    from mlpmem_lightning.lightning.optim import ClipGradients

    lin = torch.nn.Linear(4, 4)
    for p in lin.parameters():
        p.grad = torch.randn_like(p) * 10
    before = torch.cat([p.grad.flatten() for p in lin.parameters()]).double()
    hook = ClipGradients()
    hook.trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None))  # bf16-mixed / 32: no scaler
    hook.configure_gradient_clipping(torch.optim.AdamW(lin.parameters()), 1.0, "norm")
    after = torch.cat([p.grad.flatten() for p in lin.parameters()]).double()
    assert abs(float(after.norm()) - 1.0) < 1e-5
    torch.testing.assert_close(after, before / before.norm(), rtol=1e-5, atol=1e-7)  # direction kept


def test_cuda_graph_path_trains_the_same_weights(small_store, tmp_path):
    """`--model.cuda_graph true` does forward and backward itself and skips Lightning's zero_grad and backward;
    optimizer, clipping and LR schedule stay Lightning's. Off a GPU it runs the same step eagerly: the weights
    must equal the plain path's bit for bit (on a GPU the captured graph is checked by the GPU test below)."""
    budget = ["--model.max_tokens", str(6 * BATCH * SEQ), "--trainer.val_check_interval", "0.5",
              "--trainer.gradient_clip_val", "0.5"]
    run_cli(fit_args(small_store, tmp_path / "plain", *budget))
    run_cli(fit_args(small_store, tmp_path / "graph", *budget, "--model.cuda_graph", "true"))
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for r in ("plain", "graph"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_optimizer_is_made_capturable_with_a_tensor_lr_the_schedule_moves():
    """A checkpoint saved without the step graph restores a float LR and capturable=False; a captured step would
    freeze that LR. make_capturable turns it into a device tensor that LambdaLR fills in place."""
    from mlpmem_lightning.lightning.optim import make_capturable

    lin = torch.nn.Linear(3, 3)
    saved = torch.optim.AdamW(lin.parameters(), lr=0.5).state_dict()
    opt = torch.optim.AdamW(lin.parameters(), lr=0.1)
    opt.load_state_dict(saved)
    make_capturable(opt, torch.device("cpu"))
    lr = opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and float(lr) == 0.5 and opt.param_groups[0]["capturable"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.25)  # the same tensor, refilled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_captured_step_trains_like_the_eager_step_on_gpu(small_store, tmp_path):
    """On a GPU, 40 steps with the step captured as a CUDA graph end within bf16 noise of the eager steps' weights
    and training loss (the CPU test above checks the Lightning wiring bit for bit)."""
    def fit(run: str, *extra: str):
        return run_cli(["fit", "--config", str(EXP / "trainer/gpu.yaml"),
                        "--config", str(EXP / "model/decoder_200k.yaml"),
                        "--data.token_store", str(small_store), "--data.seq_len", str(SEQ), "--data.batch_size",
                        str(BATCH), "--model.max_tokens", str(40 * BATCH * SEQ), "--trainer.val_check_interval", "1.0",
                        "--trainer.default_root_dir", str(tmp_path / run), "--trainer.enable_progress_bar", "false",
                        *extra])

    plain, graph = fit("eager"), fit("graph", "--model.cuda_graph", "true")
    assert graph.model.step_graph.graph is not None  # captured, not the eager fallback
    a, b = plain.model.net.state_dict(), graph.model.net.state_dict()
    rel = max(float((a[k].float() - b[k].float()).norm() / (a[k].float().norm() + 1e-12)) for k in a)
    assert rel < 0.05, rel
    la, lb = (float(c.trainer.callback_metrics["val/loss"]) for c in (plain, graph))
    assert abs(la - lb) < 0.02 * la, (la, lb)


def test_token_nll_in_chunks_matches_a_float64_log_softmax(monkeypatch):
    """The float32 copy of the logits is made a chunk of rows at a time (an evaluation batch's whole copy ran a GPU
    share out of memory): the NLL is still each token's own, against NumPy in float64."""
    import numpy as np

    from mlpmem_lightning.lightning import evaluation

    monkeypatch.setattr(evaluation, "FLOAT_CHUNK", 3 * 50 + 7)  # 3 rows per chunk, the last one short
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    x = logits.double().numpy()
    ref = np.log(np.exp(x).sum(-1)) - np.take_along_axis(x, labels.numpy()[..., None], -1)[..., 0]
    np.testing.assert_allclose(evaluation.token_nll(logits, labels).double().numpy(), ref, atol=1e-5)
