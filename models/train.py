"""Train the models shipped in models/ and write each as ONNX with a JSON manifest.

Needs the ``[train]`` extra (torch==2.13.0; onnx and onnxruntime are core dependencies) and the full IDX files
(scripts/fetch_data.sh):

    pip install -e '.[train]'
    scripts/fetch_data.sh data
    python models/train.py --data data/mnist --arch fcnn-regular --out models/fcnn_mnist_3v7_benign
    python models/train.py --data data/mnist --arch fcnn-regular --method pgd --eps-train 2 \
        --out models/fcnn_mnist_3v7_pgd2
    python models/train.py --data data/fashion-mnist --arch fcnn-regular --method trades --eps-train 2 \
        --out models/fcnn_fmnist_3v7_trades2
    python models/train.py --data data/mnist --arch cnn --epochs 3 --out models/cnn_mnist_3v7_benign
    python models/train.py --data data/mnist --classes 0 1 2 3 4 5 6 7 8 9 --arch fcnn-regular \
        --out models/fcnn_mnist_10class_benign
    python models/train.py --from-manifest models/fcnn_mnist_3v7_pgd2.json   # retrain from a manifest

Training methods (``--method``):

* ``benign``: cross-entropy on clean images.
* ``pgd``: Madry et al. adversarial training, cross-entropy on ℓ2 PGD examples (``--pgd-steps``
  steps of size ``--pgd-step-size``, default 2.5 * eps / steps, random start uniform in the ℓ2
  ball of radius ``--eps-train``, pixels clipped to [0, 1]).
* ``trades``: Zhang et al. 2019, CE(f(x), y) + beta * KL(f(x) || f(x_adv)) as in the reference
  implementation (``nn.KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))``, batch mean), where
  x_adv maximises that KL by ℓ2 PGD started at x + 0.001 * N(0, I) (the reference start).

Attacks during training run with the model in eval mode (batch-norm running statistics), the
parameter update in train mode. Every setting that affects the weights is a flag recorded in the
manifest (``command`` holds the exact command line), and training is deterministic for a given
seed on the CPU (one thread). ``--classes`` names two or more classes (default 3 7); output k
is class ``classes[k]``. The ONNX file is written with onnx.helper from the trained weights
(input ``x`` of shape [N, 1, 28, 28], pixels in [0, 1]; output ``logits`` [N, K], class order =
``--classes``) and checked against the torch model with onnxruntime before it is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
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
    # name: hidden widths of a 784-...-K ReLU network; "cnn" is the convolutional network below
    "fcnn-regular": (300, 200),
    "fcnn-small": (150, 100),
    "fcnn-smaller": (75, 50),
    "fcnn-tiny": (10, 10),
    "cnn": None,
}
CNN_LAYERS = ["conv 20 5x5 (stride 1, no padding)", "batchnorm", "relu", "maxpool 2x2",
              "conv 50 5x5 (stride 1, no padding)", "batchnorm", "relu", "maxpool 2x2",
              "flatten (800)", "linear 500", "relu"]  # then "linear K"
EVAL_EPS = (0.5, 1.0, 2.0, 3.0)
ORT_TOL = 1e-4


def make_fcnn(widths: tuple[int, ...], d_in: int = 784, n_out: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def make_cnn(n_out: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.BatchNorm2d(20), nn.ReLU(), nn.MaxPool2d(2, 2),   # 20 x 12 x 12
        nn.Conv2d(20, 50, 5), nn.BatchNorm2d(50), nn.ReLU(), nn.MaxPool2d(2, 2),  # 50 x 4 x 4
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, n_out))


def make_model(arch: str, n_out: int = 2) -> nn.Sequential:
    return make_cnn(n_out) if arch == "cnn" else make_fcnn(ARCHS[arch], n_out=n_out)


def select_classes(data_dir: Path, split: str, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``classes`` in file order, pixels / 255, labels 0..K-1 (classes[k] -> k)."""
    ds = load_idx_dir(data_dir, split)
    keep = np.flatnonzero(np.isin(ds.y, classes))
    X = ds.X[keep].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    lookup = {c: k for k, c in enumerate(classes)}
    y = np.array([lookup[int(c)] for c in ds.y[keep]], dtype=np.int64)
    return X, y


def _bnorm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
           loss: str = "ce") -> torch.Tensor:
    """ℓ2 PGD (used for evaluation here) from x, step 2.5 * eps / steps, pixels clipped to [0, 1].

    ``loss="ce"`` ascends the cross-entropy; ``loss="margin"`` the logit margin (the largest wrong
    class's logit minus the right class's), which does not saturate in float32 on confidently
    classified points and so is the stronger attack at large eps."""
    alpha = 2.5 * eps / steps
    sign = (2 * y - 1).to(x.dtype)  # two classes: +1 for class 1, -1 for class 0
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        z = model(x + delta)
        if loss == "ce":
            obj = nn.functional.cross_entropy(z, y)
        elif z.shape[1] == 2:  # the form the two-class manifests were computed with
            obj = (sign * (z[:, 0] - z[:, 1])).sum()
        else:
            right = nn.functional.one_hot(y, z.shape[1]).bool()
            obj = (z.masked_fill(right, -torch.inf).amax(1) - z[right]).sum()
        (g,) = torch.autograd.grad(obj, delta)
        gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        d = delta.detach() + alpha * g / gn
        dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = d * torch.clamp(eps / dn.clamp_min(1e-12), max=1.0)
        delta = ((x + d).clamp(0, 1) - x).requires_grad_(True)
    return (x + delta).detach()


def attack_l2(model: nn.Module, x: torch.Tensor, loss_fn, eps: float, steps: int, alpha: float,
              delta0: torch.Tensor) -> torch.Tensor:
    """ℓ2 PGD for training: maximise ``loss_fn(model(x + delta))`` (a sum over the batch) from
    ``delta0`` with normalised-gradient steps of size ``alpha``, projecting onto the ℓ2 ball of
    radius ``eps`` and clipping pixels to [0, 1]. The model is used as it is (eval mode)."""
    d = delta0 * torch.clamp(eps / _bnorm(delta0).clamp_min(1e-12), max=1.0)
    delta = ((x + d).clamp(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        (g,) = torch.autograd.grad(loss_fn(model(x + delta)), delta)
        d = delta.detach() + alpha * g / _bnorm(g).clamp_min(1e-12)
        d = d * torch.clamp(eps / _bnorm(d).clamp_min(1e-12), max=1.0)
        delta = ((x + d).clamp(0, 1) - x).requires_grad_(True)
    return (x + delta).detach()


def uniform_l2_ball(shape: tuple[int, ...], eps: float, gen: torch.Generator) -> torch.Tensor:
    """Points uniform in the ℓ2 ball of radius eps (one per row)."""
    u = torch.randn(shape, generator=gen)
    r = torch.rand((shape[0],), generator=gen) ** (1.0 / float(np.prod(shape[1:])))
    return eps * u / _bnorm(u).clamp_min(1e-12) * r.view(-1, *([1] * (len(shape) - 1)))


def correct_mask(model: nn.Module, X: np.ndarray, y: np.ndarray, eps: float = 0.0, loss: str = "ce",
                 batch: int = 1000) -> np.ndarray:
    """Per test point: still classified correctly after the PGD attack of radius eps (clean if 0)?
    (The attack is per point; ``batch`` only affects speed, up to float rounding.)"""
    model.eval()
    out = []
    for i in range(0, len(X), batch):
        xb, yb = torch.from_numpy(X[i:i + batch]), torch.from_numpy(y[i:i + batch])
        if eps > 0:
            xb = pgd_l2(model, xb, yb, eps, loss=loss)
        with torch.no_grad():
            out.append((model(xb).argmax(1) == yb).numpy())
    return np.concatenate(out)


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    return int(correct_mask(model, X, y, eps).sum()) / len(X)


def evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, batch: int = 1000) -> dict:
    """Clean accuracy and, for each eps in EVAL_EPS, accuracy under the cross-entropy PGD (the
    number the first manifests recorded), the margin PGD, and both (a point counts only if it
    survives both attacks: the tightest upper bound on robust accuracy recorded here)."""
    ce, mg, both = {}, {}, {}
    for e in EVAL_EPS:
        a, b = correct_mask(model, X, y, e, "ce", batch), correct_mask(model, X, y, e, "margin", batch)
        ce[str(e)], mg[str(e)] = int(a.sum()) / len(X), int(b.sum()) / len(X)
        both[str(e)] = int((a & b).sum()) / len(X)
    return {"n": int(len(X)), "clean_accuracy": int(correct_mask(model, X, y, batch=batch).sum()) / len(X),
            "pgd_l2_accuracy": ce, "pgd_l2_margin_accuracy": mg, "pgd_l2_accuracy_both": both,
            "pgd": "20 steps from x (no random start), step 2.5*eps/20, pixels clipped to [0, 1]; "
                   "pgd_l2_accuracy ascends the cross-entropy, pgd_l2_margin_accuracy the logit margin, "
                   "pgd_l2_accuracy_both counts points that survive both"}


def _finish_model(nodes, inits, doc: str, n_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fxverify_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="fxverify-train",
                          doc_string=doc)
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _arr(t: torch.Tensor, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)


def fcnn_onnx(model: nn.Sequential, doc: str) -> onnx.ModelProto:
    """The trained FCNN as ONNX (Flatten, then Gemm/Relu pairs)."""
    nodes, inits = [helper.make_node("Flatten", ["x"], ["flat"], name="flatten", axis=1)], []
    prev, k = "flat", 0
    for layer in model:
        if isinstance(layer, nn.Linear):
            k += 1
            w, b = f"fc{k}.weight", f"fc{k}.bias"
            inits += [_arr(layer.weight, w), _arr(layer.bias, b)]
            nodes.append(helper.make_node("Gemm", [prev, w, b], [f"fc{k}"], name=f"fc{k}", transB=1))
            prev = f"fc{k}"
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [prev], [f"relu{k}"], name=f"relu{k}"))
            prev = f"relu{k}"
    nodes[-1].output[0] = "logits"
    return _finish_model(nodes, inits, doc, model[-1].out_features)


def cnn_onnx(model: nn.Sequential, doc: str) -> onnx.ModelProto:
    """The trained CNN as ONNX: Conv, BatchNormalization (inference, running statistics), Relu,
    MaxPool, ..., Flatten, Gemm (transB=1), Relu, Gemm."""
    nodes, inits, prev, count = [], [], "x", {}

    def name(kind: str) -> str:
        count[kind] = count.get(kind, 0) + 1
        return f"{kind}{count[kind]}"

    for layer in model:
        if isinstance(layer, nn.Conv2d):
            if layer.stride != (1, 1) or layer.padding != (0, 0) or layer.dilation != (1, 1) or layer.groups != 1:
                raise ValueError(f"unsupported Conv2d settings: {layer}")
            n = name("conv")
            inits += [_arr(layer.weight, f"{n}.weight"), _arr(layer.bias, f"{n}.bias")]
            nodes.append(helper.make_node("Conv", [prev, f"{n}.weight", f"{n}.bias"], [n], name=n,
                                          kernel_shape=list(layer.kernel_size), strides=[1, 1], pads=[0, 0, 0, 0]))
        elif isinstance(layer, nn.BatchNorm2d):
            n = name("bn")
            inits += [_arr(layer.weight, f"{n}.scale"), _arr(layer.bias, f"{n}.bias"),
                      _arr(layer.running_mean, f"{n}.mean"), _arr(layer.running_var, f"{n}.var")]
            nodes.append(helper.make_node("BatchNormalization",
                                          [prev, f"{n}.scale", f"{n}.bias", f"{n}.mean", f"{n}.var"], [n],
                                          name=n, epsilon=float(layer.eps)))
        elif isinstance(layer, nn.ReLU):
            n = name("relu")
            nodes.append(helper.make_node("Relu", [prev], [n], name=n))
        elif isinstance(layer, nn.MaxPool2d):
            if (layer.kernel_size not in (2, (2, 2)) or layer.stride not in (2, (2, 2))
                    or layer.padding not in (0, (0, 0))):
                raise ValueError(f"unsupported MaxPool2d settings: {layer}")
            n = name("pool")
            nodes.append(helper.make_node("MaxPool", [prev], [n], name=n, kernel_shape=[2, 2], strides=[2, 2]))
        elif isinstance(layer, nn.Flatten):
            n = name("flatten")
            nodes.append(helper.make_node("Flatten", [prev], [n], name=n, axis=1))
        elif isinstance(layer, nn.Linear):
            n = name("fc")
            inits += [_arr(layer.weight, f"{n}.weight"), _arr(layer.bias, f"{n}.bias")]
            nodes.append(helper.make_node("Gemm", [prev, f"{n}.weight", f"{n}.bias"], [n], name=n, transB=1))
        else:
            raise ValueError(f"cannot export layer {layer}")
        prev = nodes[-1].output[0]
    nodes[-1].output[0] = "logits"
    return _finish_model(nodes, inits, doc, model[-1].out_features)


def check_onnx(m: onnx.ModelProto, model: nn.Module, X: np.ndarray) -> float:
    """Max |onnxruntime - torch (eval)| over the logits of X; raise if it exceeds ORT_TOL."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    model.eval()
    diff = 0.0
    for i in range(0, len(X), 500):
        xb = np.ascontiguousarray(X[i:i + 500], dtype=np.float32)
        (got,) = sess.run(["logits"], {"x": xb})
        with torch.no_grad():
            want = model(torch.from_numpy(xb)).numpy()
        diff = max(diff, float(np.abs(got - want).max()))
    if not diff < ORT_TOL:
        raise SystemExit(f"ERROR: exported ONNX disagrees with the torch model: max abs logit difference {diff:.3g} "
                         f">= {ORT_TOL} (nothing written)")
    return diff


def default_dataset_name(data_dir: Path) -> str:
    return data_dir.resolve().name if data_dir.exists() else data_dir.name


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-manifest", type=Path, metavar="JSON",
                    help="retrain the model a manifest describes, with its recorded command line "
                         "(--out overrides where it is written) and compare the sha256")
    ap.add_argument("--data", type=Path, help="IDX directory with the full train and t10k files")
    ap.add_argument("--dataset", default=None,
                    help="name recorded in the manifest (default: the --data directory's name)")
    ap.add_argument("--classes", type=int, nargs="+", default=(3, 7),
                    help="two or more classes, in output order (default 3 7)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="fcnn-regular")
    ap.add_argument("--method", choices=["benign", "pgd", "trades"], default="benign")
    ap.add_argument("--eps-train", type=float, default=None, help="ℓ2 radius for pgd / trades training")
    ap.add_argument("--pgd-steps", type=int, default=10, help="PGD steps of the inner maximisation")
    ap.add_argument("--pgd-step-size", type=float, default=None, help="default 2.5 * eps_train / pgd_steps")
    ap.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="output path without extension (.onnx and .json)")
    return ap


def from_manifest(path: Path, out: Path | None) -> None:
    man = json.loads(path.read_text())
    words = shlex.split(man["command"])
    if words[:2] != ["python", "models/train.py"]:
        raise SystemExit(f"{path}: command {man['command']!r} is not a models/train.py command line")
    args = words[2:]
    if out is not None:
        k = args.index("--out")
        args[k + 1] = str(out)
    a = build_parser().parse_args(args)
    rec = man["training"]
    for key, val in (("method", a.method), ("epochs", a.epochs), ("seed", a.seed), ("batch_size", a.batch_size),
                     ("lr", a.lr)):
        if key in rec and rec[key] != val:
            raise SystemExit(f"{path}: training.{key} = {rec[key]!r} but the command line gives {val!r}")
    if rec.get("torch") and rec["torch"] != torch.__version__:
        print(f"warning: the model was trained with torch {rec['torch']}, this is {torch.__version__}; "
              f"the weights may differ in the last bits", file=sys.stderr)
    print("retraining: python models/train.py " + shlex.join(args), flush=True)
    onnx_path = train(a, "python models/train.py " + shlex.join(args))
    got = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    if got == man["sha256"]:
        print(f"reproduced: {onnx_path} has the manifest's sha256 {got}")
    else:
        raise SystemExit(f"NOT reproduced: {onnx_path} has sha256 {got}, the manifest records {man['sha256']} "
                         f"(different torch build or CPU?)")


def train(a: argparse.Namespace, command: str) -> Path:
    if a.data is None or a.out is None:
        raise SystemExit("--data and --out are required (or use --from-manifest)")
    if a.method == "benign":
        if a.eps_train is not None:
            raise SystemExit("--eps-train is for --method pgd / trades")
    elif a.eps_train is None or a.eps_train <= 0:
        raise SystemExit(f"--method {a.method} needs --eps-train > 0")
    dataset = a.dataset or default_dataset_name(a.data)
    if len(a.classes) < 2 or len(set(a.classes)) != len(a.classes):
        raise SystemExit(f"--classes needs two or more different classes, got {a.classes}")

    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    classes = tuple(a.classes)
    K = len(classes)
    Xtr, ytr = select_classes(a.data, "train", classes)
    Xte, yte = select_classes(a.data, "test", classes)
    model = make_model(a.arch, K)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    adv = a.method != "benign"
    if adv:
        eps, steps = a.eps_train, a.pgd_steps
        alpha = a.pgd_step_size if a.pgd_step_size is not None else 2.5 * eps / steps
        atk_gen = torch.Generator().manual_seed(a.seed + 1)  # random starts; separate from the shuffling
    kl = nn.KLDivLoss(reduction="sum")
    t0, c0 = time.time(), time.process_time()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=gen).numpy()
        total = 0.0
        for i in range(0, len(perm), a.batch_size):
            idx = perm[i:i + a.batch_size]
            xb, yb = torch.from_numpy(Xtr[idx]), torch.from_numpy(ytr[idx])
            if a.method == "benign":
                loss = nn.functional.cross_entropy(model(xb), yb)
            elif a.method == "pgd":
                model.eval()
                x_adv = attack_l2(model, xb, lambda z: nn.functional.cross_entropy(z, yb, reduction="sum"),
                                  eps, steps, alpha, uniform_l2_ball(tuple(xb.shape), eps, atk_gen))
                model.train()
                loss = nn.functional.cross_entropy(model(x_adv), yb)
            else:  # trades
                model.eval()
                with torch.no_grad():
                    p_nat = nn.functional.softmax(model(xb), dim=1)
                x_adv = attack_l2(model, xb, lambda z: kl(nn.functional.log_softmax(z, dim=1), p_nat),
                                  eps, steps, alpha, 0.001 * torch.randn(tuple(xb.shape), generator=atk_gen))
                model.train()
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits, yb) + a.beta * kl(
                    nn.functional.log_softmax(model(x_adv), dim=1), nn.functional.softmax(logits, dim=1)) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{a.epochs}: train loss {total / len(perm):.4f} ({time.time() - t0:.0f} s)",
              flush=True)
    seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
    model.eval()

    onnx_path = a.out.with_suffix(".onnx")
    what = f"{classes[0]} vs {classes[1]}" if K == 2 else "classes " + " ".join(map(str, classes))
    doc = f"{a.arch} {dataset} {what}, {a.method}, seed {a.seed}"
    if adv:
        doc = f"{a.arch} {dataset} {what}, {a.method} eps {a.eps_train:g}, seed {a.seed}"
    m = cnn_onnx(model, doc) if a.arch == "cnn" else fcnn_onnx(model, doc)
    ort_diff = check_onnx(m, model, Xte)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path.write_bytes(m.SerializeToString())
    if a.arch == "cnn":
        arch = {"name": a.arch, "layers": [*CNN_LAYERS, f"linear {K}"], "activation": "relu",
                "parameters": int(sum(p.numel() for p in model.parameters()))}
    else:
        arch = {"name": a.arch, "layers": [784, *ARCHS[a.arch], K], "activation": "relu"}
    training = {"method": a.method, "eps_train": a.eps_train, "epochs": a.epochs, "batch_size": a.batch_size,
                "optimizer": "Adam", "lr": a.lr, "seed": a.seed, "n_train": int(len(Xtr)),
                "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "torch": torch.__version__}
    if adv:
        training["attack"] = {
            "norm": "l2", "steps": steps, "step_size": alpha, "eps": eps,
            "objective": "cross-entropy" if a.method == "pgd" else "KL(f(x) || f(x_adv)) (TRADES reference)",
            "random_start": ("uniform in the l2 ball" if a.method == "pgd" else "0.001 * N(0, I)"),
            "model_mode": "eval", "pixels": "clipped to [0, 1]"}
        if a.method == "trades":
            training["beta"] = a.beta
    t1 = time.time()
    manifest = {
        "name": onnx_path.stem,
        "file": onnx_path.name,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "architecture": arch,
        "dataset": dataset,
        "classes": list(classes),
        "label_order": ", ".join(f"output {k} = class {c}" for k, c in enumerate(classes)),
        "input": {"name": "x", "shape": ["N", 1, 28, 28], "pixels": "[0, 1] (raw / 255)"},
        "training": training,
        "test": evaluate(model, Xte, yte, batch=100 if a.arch == "cnn" else 1000),  # 100: faster for the CNN
        "onnxruntime_max_abs_diff": ort_diff,
        "command": command,
    }
    a.out.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["test"]), f"(eval {time.time() - t1:.0f} s)", flush=True)
    return onnx_path


def main(argv: list[str] | None = None) -> None:
    a = build_parser().parse_args(argv)
    if a.from_manifest is not None:
        from_manifest(a.from_manifest, a.out)
        return
    train(a, "python models/train.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
