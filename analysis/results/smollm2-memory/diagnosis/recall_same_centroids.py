import numpy as np, torch, faiss
from mlpmem_lightning.knn.datastore import Datastore
from mlpmem_lightning.knn.search.clustered import ClusteredIVF
from mlpmem_lightning.models.loading import load_decoder
from mlpmem_lightning.models.decoder import ffn_inputs
from mlpmem_lightning.data.token_store import TokenStore
torch.set_num_threads(2)
ds = Datastore("/tmp/diag/w/ds"); keys = np.asarray(ds.keys, np.float32); vals = np.asarray(ds.values)
st = TokenStore("/tmp/diag/w/tokens"); va = np.asarray(st.split("valid"), np.int64)
net = load_decoder("/work/main/.carry/smollm2").net.eval()
n = (len(va) - 1) // 128 * 128
with torch.no_grad():
    q = ffn_inputs(net, torch.from_numpy(va[:n]).view(-1, 128)).reshape(-1, 576).numpy()
lab = va[1:n + 1]
K = 256
idx = faiss.IndexFlatL2(576); idx.add(keys); dref, iref = idx.search(q, K)
def report(name, d, i):
    rec = np.mean([len(set(a) & set(b)) / K for a, b in zip(i, iref)])
    w = np.exp(-(d - d[:, :1]) / 4.0); w /= w.sum(1, keepdims=True)
    pk = (w * (vals[i] == lab[:, None])).sum(1)
    print(f"{name}: recall@{K} {rec:.3f}, mean p_knn(label) at T=4 {pk.mean():.4f}, 1-NN acc {(vals[i[:,0]]==lab).mean():.3f}")
report("exact", dref, iref)
qz = faiss.IndexFlatL2(576); ivf = faiss.IndexIVFFlat(qz, 576, 16); ivf.train(keys); ivf.add(keys)
for nprobe in (1, 2, 4, 8):
    ivf.nprobe = nprobe; d, i = ivf.search(q, K); report(f"faiss ivf 16/{nprobe}", d, i)
    s = ClusteredIVF(ds.keys, 16, nprobe); d, i = s.search(torch.from_numpy(q), K)
    report(f"clustered 16/{nprobe}", d.numpy(), i.numpy())
print("--- same centroids")
s = ClusteredIVF(ds.keys, 16, 1)
cen = s.centroids.numpy()
qz = faiss.IndexFlatL2(576); qz.add(cen); ivf = faiss.IndexIVFFlat(qz, 576, 16); ivf.is_trained = True; ivf.add(keys)
ivf.nprobe = 1; d, i = ivf.search(q, K); report("faiss ivf same cen 16/1", d, i)
d, i = s.search(torch.from_numpy(q), K); report("clustered 16/1", d.numpy(), i.numpy())
a_f = qz.search(q, 1)[1][:, 0]; a_c = s.nearest(torch.from_numpy(q), 1)[:, 0].numpy()
print("assignment agreement", (a_f == a_c).mean(), "list sizes", s.counts.tolist())
