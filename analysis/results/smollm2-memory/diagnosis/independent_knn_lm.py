"""Independent kNN-LM check on SmolLM2: HF model, hook at last MLP input, faiss exact search, float64 mixing."""
import sys, time, numpy as np, torch, faiss
from transformers import AutoModelForCausalLM
torch.set_num_threads(2)
D = "/work/main/.carry/smollm2"; S = "/work/main/.carry/mixed-english-smollm2"
NTRAIN = int(sys.argv[1]) if len(sys.argv) > 1 else 65536
NQ = 4096; SEQ = 512
m = AutoModelForCausalLM.from_pretrained(D, torch_dtype=torch.float32).eval()
tr = np.load(f"{S}/train.npy", mmap_mode="r"); va = np.load(f"{S}/valid.npy", mmap_mode="r")
print("dtypes", tr.dtype, tr.shape, va.shape, "max", int(tr[:NTRAIN].max()))
def run(tokens, n):
    keys, finals, resid, logp, nxt = [], [], [], [], []
    cap = {}
    h = m.model.layers[-1].mlp.register_forward_pre_hook(lambda mod, a: cap.__setitem__("k", a[0]))
    for s in range(0, n, SEQ):
        x = torch.from_numpy(np.asarray(tokens[s:s + SEQ + 1], dtype=np.int64))[None]
        with torch.no_grad():
            out = m(x[:, :-1], output_hidden_states=True)
        keys.append(cap["k"][0].numpy()); finals.append(out.hidden_states[-1][0].numpy())
        resid.append(out.hidden_states[-2][0].numpy())
        lp = torch.log_softmax(out.logits[0].double(), -1)
        logp.append(lp.gather(1, x[0, 1:, None])[:, 0].numpy()); nxt.append(x[0, 1:].numpy())
    h.remove()
    return [np.concatenate(a) for a in (keys, finals, resid, logp, nxt)]
t = time.time()
K, F, R, _, V = run(tr, NTRAIN); print("train keys", K.shape, time.time() - t)
Kq, Fq, Rq, lpq, tq = run(va, NQ); print("valid ppl", np.exp(-lpq.mean()))
for name, keys, q in (("mlp_in", K, Kq), ("final_norm", F, Fq), ("resid_last_in", R, Rq)):
    norms = np.linalg.norm(keys, axis=1); print(name, "key norm median", np.median(norms), "max abs dim share",
          np.median(np.abs(keys).max(1) / norms))
    idx = faiss.IndexFlatL2(keys.shape[1]); idx.add(keys.astype(np.float32))
    dist, nb = idx.search(q.astype(np.float32), 1024)
    vals = V[nb]
    print(name, "1-NN next-token acc", (vals[:, 0] == tq).mean(), "d1 median", np.median(dist[:, 0]), "d32", np.median(dist[:, 31]))
    for T in (1, 4, 16, 64, 256, 1024, 4096):
        w = np.exp(-(dist - dist[:, :1]) / T); w /= w.sum(1, keepdims=True)
        pk = (w * (vals == tq[:, None])).sum(1)
        best = min((np.exp(-np.log((1 - l) * np.exp(lpq) + l * pk).mean()), l) for l in np.arange(0, 1, 0.05))
        print(f"  T={T} best ppl {best[0]:.3f} at lambda {best[1]:.2f}")
