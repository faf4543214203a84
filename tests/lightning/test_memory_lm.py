"""MemoryLM: targets served sparsely, online = offline keys, λ edges, and the memory helping the decoder."""

import math

import numpy as np
import pytest
import torch

from mlpmem_lightning.cli.lightning import run_cli
from mlpmem_lightning.core.errors import UserError
from mlpmem_lightning.data.datamodule import LMDataModule
from mlpmem_lightning.knn.targets import KNNTargets
from mlpmem_lightning.models.decoder import ffn_inputs
from mlpmem_lightning.models.loading import load_decoder
from tests.helpers import EXP

SEQ = 128


def test_batches_carry_sparse_targets_and_stored_keys(small_targets, small_decoder, small_store, small_datastore):
    dm = LMDataModule(str(small_store), seq_len=SEQ, batch_size=4, targets=str(small_targets))
    dm.setup("fit")
    dm.serve_keys = True
    batch = dm.windows("train").__getitems__([0, 5, 17])
    t = KNNTargets(small_targets)
    rows = batch["positions"][:, None].numpy() + np.arange(SEQ)  # row p <-> input position p
    assert np.array_equal(batch["knn_ids"].numpy(), t.ids[rows]) and batch["knn_ids"].dtype == torch.int64
    assert np.array_equal(batch["knn_probs"].numpy(), t.probs[rows].astype(np.float32))
    # online (recomputed by the frozen decoder) and offline (stored) keys are the same rows
    online = ffn_inputs(load_decoder(small_decoder).net, batch["input_ids"]).numpy().astype(np.float16)
    assert np.array_equal(online, batch["keys"].numpy().astype(np.float16))


def mem_args(cmd, decoder, store, targets, run, *extra):
    return [cmd, "--config", str(EXP / "trainer/cpu.yaml"), "--model", "MemoryLM",
            "--model.decoder", str(decoder), "--data.token_store", str(store), "--data.targets", str(targets),
            "--data.seq_len", str(SEQ), "--data.batch_size", "16", "--trainer.default_root_dir", str(run),
            "--trainer.enable_progress_bar", "false", *extra]


def test_memory_helps_and_lambda_edges_are_exact(memory_run, small_targets, small_decoder, small_store, tmp_path):
    ckpt = memory_run / "checkpoints" / "best.ckpt"
    val = run_cli(mem_args("validate", small_decoder, small_store, small_targets, memory_run, "--ckpt_path", str(ckpt)))
    m = {k: float(v) for k, v in val.trainer.callback_metrics.items()}
    dec = run_cli(["validate", "--config", str(EXP / "model/decoder_200k.yaml"), "--data.token_store",
                   str(small_store), "--data.seq_len", str(SEQ), "--trainer.default_root_dir", str(tmp_path / "d"),
                   "--trainer.enable_progress_bar", "false", "--ckpt_path",
                   str(small_decoder / "checkpoints" / "best.ckpt")])
    assert m["val/ppl_lambda_0.00"] == float(dec.trainer.callback_metrics["val/ppl"])  # λ=0: the decoder, exactly

    # λ=1: the memory alone, recomputed by brute force in float64
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    model = MemoryLM.load_from_checkpoint(ckpt).eval()
    windows = LMDataModule(str(small_store), seq_len=SEQ).windows("valid")
    batch = windows.__getitems__(list(range(len(windows))))
    with torch.no_grad():
        keys = ffn_inputs(model.decoder, batch["input_ids"], model.layer)
        logp = torch.log_softmax(model.memory(keys.float()).double(), -1)
    nll = -logp.gather(-1, batch["labels"][..., None]).mean().item()
    assert m["val/ppl_lambda_1.00"] == pytest.approx(math.exp(nll), rel=1e-6)
    print(f"decoder {m['val/decoder_ppl']:.2f}, memory alone {m['val/ppl_lambda_1.00']:.2f}, "
          f"decoder+memory {m['val/best_ppl']:.2f} at λ={m['val/best_lambda']:.2f}")
    assert m["val/best_ppl"] < m["val/decoder_ppl"]


@pytest.mark.parametrize("extra, message", [
    (["--model.alpha", "1.5"], "alpha"),
    (["--model.lambdas", "[0.0, 2.0]"], "λ must lie in"),
    (["--model.size", "mem-huge"], "unknown memory size"),
])
def test_memory_bad_input(small_targets, small_decoder, small_store, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        run_cli(mem_args("fit", small_decoder, small_store, small_targets, tmp_path / "r", *extra))


def test_memory_refuses_targets_of_another_decoder(small_targets, small_decoder, small_store, tmp_path):
    ckpt = torch.load(small_decoder / "checkpoints" / "best.ckpt", weights_only=False)
    name = next(k for k in ckpt["state_dict"] if k.endswith("embed_tokens.weight"))
    ckpt["state_dict"][name] = ckpt["state_dict"][name] * 1.01
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="targets come from decoder"):
        run_cli(mem_args("fit", tmp_path / "other.ckpt", small_store, small_targets, tmp_path / "r"))


def test_fit_without_targets_is_refused(small_decoder, small_store, tmp_path):
    args = mem_args("fit", small_decoder, small_store, "x", tmp_path / "r")
    i = args.index("--data.targets")
    with pytest.raises(UserError, match="needs kNN targets"):
        run_cli(args[:i] + args[i + 2:])


def test_export_reloads_without_lightning(memory_run, tmp_path):
    from mlpmem_lightning.lightning.memory_lm import MemoryLM
    from mlpmem_lightning.models.memory import load_memory

    module = MemoryLM.load_from_checkpoint(memory_run / "checkpoints" / "best.ckpt").eval()
    module.export(tmp_path / "mem")
    mem, extra = load_memory(tmp_path / "mem")
    x = torch.randn(5, 64)
    assert torch.equal(mem(x), module.memory(x))
    assert extra["decoder_fingerprint"] == module.decoder_fingerprint and extra["layer"] == module.layer


@pytest.mark.parametrize("other", ["none", "memory", "knn"])
def test_cached_generation_equals_full_recomputation(memory_run, small_decoder, small_datastore, other):
    """Greedy decoding with the KV cache and one hooked key per step == re-running the whole prefix."""
    from mlpmem_lightning.inference.generate import generate, knn_logprobs, memory_logprobs
    from mlpmem_lightning.knn.search import make_searcher
    from mlpmem_lightning.lightning.memory_lm import MemoryLM
    from mlpmem_lightning.models.decoder import logits_and_ffn_inputs

    net = load_decoder(small_decoder).net
    fn = None
    if other == "memory":
        fn = memory_logprobs(MemoryLM.load_from_checkpoint(memory_run / "checkpoints" / "best.ckpt").memory.eval())
    elif other == "knn":
        from mlpmem_lightning.knn.datastore import Datastore

        values = torch.from_numpy(np.asarray(Datastore(small_datastore).values, dtype=np.int64))
        fn = knn_logprobs(make_searcher(small_datastore, "flat", backend="torch"), values, net.config.vocab_size,
                          8, 16.0)
    lam = 0.0 if fn is None else 0.4
    prompt = torch.tensor([[5, 17, 99, 3, 250, 11]])
    out = generate(net, prompt, 8, fn, lam)
    ref = prompt
    with torch.no_grad():
        for _ in range(8):
            logits, keys = logits_and_ffn_inputs(net, ref)
            logp = torch.log_softmax(logits[:, -1].double(), -1)
            if fn is not None:
                logp = torch.logaddexp(np.log(1 - lam) + logp, np.log(lam) + fn(keys[:, -1]).double())
            ref = torch.cat([ref, logp.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_command_line_lambda_beats_the_checkpoint(memory_run, small_targets, small_decoder, small_store):
    """LightningCLI applies a checkpoint's hparams over the command line; λ chosen on valid must still apply."""
    ckpt = str(memory_run / "checkpoints" / "best.ckpt")
    cli = run_cli(mem_args("test", small_decoder, small_store, small_targets, memory_run, "--ckpt_path", ckpt,
                           "--model.lambda_", "0.35"))
    m = cli.trainer.callback_metrics
    assert float(m["test/lambda"]) == pytest.approx(0.35) and float(m["test/ppl"]) == float(m["test/ppl_lambda_0.35"])


def test_memory_step_graph_path_trains_the_same_weights(small_targets, small_decoder, small_store, tmp_path):
    """`--model.cuda_graph true` on a memory: the step (keys, memory, loss, backward, clipping, AdamW) runs inside
    StepGraphHooks, and Lightning's zero_grad, backward and optimizer step are skipped. Off a GPU it runs eagerly,
    so the trained memory must equal the plain path's bit for bit (the GPU bench captures it)."""
    budget = ["--model.max_tokens", "2048", "--trainer.gradient_clip_val", "0.5"]
    for run, extra in (("plain", []), ("graph", ["--model.cuda_graph", "true"])):
        run_cli(mem_args("fit", small_decoder, small_store, small_targets, tmp_path / run, *budget, *extra))
    a, b = (torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for r in ("plain", "graph"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_head_starts_at_random_by_default_and_copying_is_an_option(small_decoder):
    """The paper's default: the memory's head is its own (random) weights; ``init_head_from_decoder`` copies it."""
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    head = load_decoder(small_decoder).net.get_output_embeddings().weight.detach()
    torch.manual_seed(0)
    fresh = MemoryLM(str(small_decoder))
    assert fresh.memory.cfg.dropout == 0.1 and not fresh.hparams.init_head_from_decoder
    assert fresh.memory.head_w.shape == head.shape and not torch.allclose(fresh.memory.head_w, head)
    assert fresh.memory.head_w.std().item() == pytest.approx(0.02, rel=0.05)  # the memory's own init
    copied = MemoryLM(str(small_decoder), init_head_from_decoder=True)
    assert torch.equal(copied.memory.head_w, head)
    import inspect

    from mlpmem_lightning.study.architectures.mlp_memory import PAPER_MEMORY

    defaults = inspect.signature(MemoryLM).parameters  # what a study's memory runs are keyed by
    assert PAPER_MEMORY == {name: defaults[name].default for name in PAPER_MEMORY}


def test_ce_only_control_trains_without_targets_and_its_loss_is_plain_cross_entropy(small_decoder, small_store,
                                                                                     tmp_path):
    """α = 0 needs no targets: fit runs with none, and the loss of a batch is the memory's next-token cross-entropy,
    recomputed by hand in float64; an α > 0 memory still refuses to fit without targets."""
    from mlpmem_lightning.lightning.memory_lm import MemoryLM

    args = mem_args("fit", small_decoder, small_store, "x", tmp_path / "ce", "--model.alpha", "0",
                    "--model.max_tokens", str(3 * 16 * SEQ))
    i = args.index("--data.targets")
    cli = run_cli(args[:i] + args[i + 2:])
    assert cli.trainer.global_step == 3 and cli.model.targets_fingerprint is None
    model = MemoryLM.load_from_checkpoint(tmp_path / "ce" / "checkpoints" / "last.ckpt").eval()
    windows = LMDataModule(str(small_store), seq_len=SEQ).windows("train")
    batch = windows.__getitems__([0, 3, 9])
    for loss in ("sparse", "fused"):
        model.hparams.loss = loss
        out = model.losses(batch)
        with torch.no_grad():
            keys = ffn_inputs(model.decoder, batch["input_ids"], -1)
            logp = torch.log_softmax(model.memory(keys.float()).double(), -1)
        want = -logp.gather(-1, batch["labels"][..., None]).mean().item()
        assert out["loss"].item() == pytest.approx(want, rel=1e-5) and out["kl"].item() == 0.0
    refused = mem_args("fit", small_decoder, small_store, "x", tmp_path / "kl", "--model.alpha", "0.5")
    i = refused.index("--data.targets")
    with pytest.raises(UserError, match="alpha 0 for the cross-entropy-only control"):
        run_cli(refused[:i] + refused[i + 2:])
