"""Train the models shipped in models/ and write each as ONNX with a JSON manifest.

Needs the ``[train]`` extra (torch==2.13.0) and the full IDX files (scripts/fetch_data.sh):

    pip install -e '.[train]'
    scripts/fetch_data.sh data
    python models/train.py --data data/mnist --arch fcnn-regular --out models/fcnn_mnist_3v7_benign
    python models/train.py --data data/mnist --arch fcnn-tiny --epochs 20 --out models/fcnn_tiny_mnist_3v7_benign

Every setting that affects the weights is a flag recorded in the manifest (``command`` holds the
exact command line), and training is deterministic for a given seed on the CPU. The ONNX file
is written with onnx.helper from the trained weights (input ``x`` of shape [N, 1, 28, 28],
pixels in [0, 1]; output ``logits`` [N, 2], class order = ``--classes``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fxverify.data import load_idx_dir  # noqa: E402

ARCHS = {
    # name: hidden widths of a 784-...-2 ReLU network
    "fcnn-regular": (300, 200),
    "fcnn-small": (150, 100),
    "fcnn-smaller": (75, 50),
    "fcnn-tiny": (10, 10),
}


def make_fcnn(widths: tuple[int, ...], d_in: int = 784, n_out: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def two_class(data_dir: Path, split: str, classes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ds = load_idx_dir(data_dir, split)
    keep = np.flatnonzero(np.isin(ds.y, classes))
    X = ds.X[keep].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    y = (ds.y[keep] == classes[1]).astype(np.int64)  # classes[0] -> 0, classes[1] -> 1
    return X, y


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20) -> torch.Tensor:
    """ℓ2 PGD (used for evaluation here), pixels clipped to [0, 1]."""
    alpha = 2.5 * eps / steps
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        d = delta.detach() + alpha * g / gn
        dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = d * torch.clamp(eps / dn.clamp_min(1e-12), max=1.0)
        delta = ((x + d).clamp(0, 1) - x).requires_grad_(True)
    return (x + delta).detach()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(X), 1000):
        xb, yb = torch.from_numpy(X[i:i + 1000]), torch.from_numpy(y[i:i + 1000])
        if eps > 0:
            xb = pgd_l2(model, xb, yb, eps)
        with torch.no_grad():
            correct += int((model(xb).argmax(1) == yb).sum())
    return correct / len(X)


def to_onnx(model: nn.Sequential, path: Path, doc: str) -> None:
    """Write the trained FCNN as ONNX (Flatten, then Gemm/Relu pairs)."""
    nodes, inits = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1)], []
    prev, k = "flat", 0
    for layer in model:
        if isinstance(layer, nn.Linear):
            k += 1
            w, b = f"fc{k}.weight", f"fc{k}.bias"
            inits += [numpy_helper.from_array(layer.weight.detach().numpy().astype(np.float32), w),
                      numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), b)]
            nodes.append(helper.make_node("Gemm", [prev, w, b], [f"fc{k}"], name=f"fc{k}", transB=1))
            prev = f"fc{k}"
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [prev], [f"relu{k}"], name=f"relu{k}"))
            prev = f"relu{k}"
    nodes[-1].output[0] = "logits"
    graph = helper.make_graph(nodes, "fxverify_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fxverify-train",
                          doc_string=doc)
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    path.write_bytes(m.SerializeToString())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="IDX directory with the full train and t10k files")
    ap.add_argument("--dataset", default="mnist", help="name recorded in the manifest")
    ap.add_argument("--classes", type=int, nargs=2, default=(3, 7))
    ap.add_argument("--arch", choices=sorted(ARCHS), default="fcnn-regular")
    ap.add_argument("--method", choices=["benign"], default="benign")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="output path without extension (.onnx and .json)")
    a = ap.parse_args(argv)

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    classes = tuple(a.classes)
    Xtr, ytr = two_class(a.data, "train", classes)
    Xte, yte = two_class(a.data, "test", classes)
    model = make_fcnn(ARCHS[a.arch])
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen).numpy()
        total = 0.0
        for i in range(0, len(perm), a.batch_size):
            idx = perm[i:i + a.batch_size]
            xb, yb = torch.from_numpy(Xtr[idx]), torch.from_numpy(ytr[idx])
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{a.epochs}: train loss {total / len(perm):.4f}", flush=True)
    seconds = time.time() - t0

    onnx_path = a.out.with_suffix(".onnx")
    to_onnx(model, onnx_path, f"{a.arch} {a.dataset} {classes[0]} vs {classes[1]}, {a.method}, seed {a.seed}")
    widths = ARCHS[a.arch]
    manifest = {
        "name": onnx_path.stem,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "architecture": {"name": a.arch, "layers": [784, *widths, 2], "activation": "relu"},
        "dataset": a.dataset,
        "classes": list(classes),
        "label_order": f"output 0 = class {classes[0]}, output 1 = class {classes[1]}",
        "input": {"name": "x", "shape": ["N", 1, 28, 28], "pixels": "[0, 1] (raw / 255)"},
        "training": {"method": a.method, "eps_train": None, "epochs": a.epochs, "batch_size": a.batch_size,
                     "optimizer": "Adam", "lr": a.lr, "seed": a.seed, "n_train": int(len(Xtr)),
                     "seconds": round(seconds, 1), "torch": torch.__version__},
        "test": {"n": int(len(Xte)), "clean_accuracy": accuracy(model, Xte, yte),
                 "pgd_l2_accuracy": {str(e): accuracy(model, Xte, yte, e) for e in (0.5, 1.0, 2.0)},
                 "pgd": "20 steps, step 2.5*eps/20, pixels clipped to [0, 1]"},
        "command": "python models/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    a.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["test"]))


if __name__ == "__main__":
    main()
