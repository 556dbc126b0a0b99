"""Fine-tuning the FC layers on pooled window vectors, with the conv trunk frozen.

SPP-net (Sec. 4) fine-tunes only fc6, fc7 and a new (K+1)-way classifier (index
``K`` = background) on the pooled conv5 vectors of stored windows: the conv trunk
stays frozen, so a mini-batch is a few rows of a matrix and no image is touched.
Mini-batches hold 25 % foreground windows (IoU ≥ ``fg_iou``) and 75 % background
windows (IoU in ``bg_iou``). Deviations from the paper, for a CPU: a 512-unit head
(the paper's fc6/fc7 have 4 096) and Adam (the paper used SGD).

``pooled``: ``(N, D)`` window vectors (:mod:`sppnet_lite.features`); ``labels``:
``(N,)`` in 0..K; ``ious``: ``(N,)`` best IoU with a ground truth. Taught in chapter 07.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .windows import BG_IOU, FG_IOU

FG_FRACTION = 0.25
"""The share of foreground windows in a fine-tuning mini-batch (R-CNN's and SPP-net's)."""


class FCHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 with ``num_classes + 1`` outputs.

    Input: ``pooled`` window vectors ``(N, in_dim)`` float; they are multiplied by the
    buffer ``input_scale`` first (set from the training windows so their mean squared
    entry is about 1). Output: logits ``(N, K + 1)``, index ``K`` = background.
    :meth:`fc7_activations` gives the ``(N, hidden)`` vectors the SVMs use.
    Taught in chapter 07.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 512, dropout: float = 0.5):
        super().__init__()
        self.in_dim, self.num_classes, self.hidden = int(in_dim), int(num_classes), int(hidden)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.fc6 = nn.Linear(self.in_dim, self.hidden)
        self.fc7 = nn.Linear(self.hidden, self.hidden)
        self.fc8 = nn.Linear(self.hidden, self.num_classes + 1)
        self.dropout = nn.Dropout(dropout)

    def fc7_activations(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(N, hidden)`` fc7 activations (after ReLU) of ``(N, in_dim)`` pooled vectors."""
        x = pooled.float() * self.input_scale
        x = self.dropout(torch.relu(self.fc6(x)))
        return torch.relu(self.fc7(x))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc8(self.dropout(self.fc7_activations(pooled)))


def sample_minibatch(labels, ious, batch_size: int, rng: np.random.Generator,
                     fg_fraction: float = FG_FRACTION, fg_iou: float = FG_IOU,
                     bg_iou: tuple[float, float] = BG_IOU) -> np.ndarray:
    """Row indices of one fine-tuning mini-batch: 25% foreground, the rest background.

    ``labels`` (N,) int in 0..K (``K`` = background), ``ious`` (N,) best IoU of each
    window with a ground truth. Foreground: IoU >= ``fg_iou`` (ground-truth boxes
    have IoU 1); background: IoU in ``bg_iou``. When there are too few foreground
    windows the batch is filled with background. Taught in chapter 07.
    """
    ious = np.asarray(ious)
    fg = np.flatnonzero(ious >= fg_iou)
    bg = np.flatnonzero((ious >= bg_iou[0]) & (ious < bg_iou[1]))
    if len(bg) == 0:
        bg = np.flatnonzero(ious < fg_iou)
    n_fg = min(round(fg_fraction * batch_size), len(fg))
    n_bg = min(batch_size - n_fg, len(bg))
    parts = [rng.choice(fg, n_fg, replace=False) if n_fg else np.zeros(0, np.int64),
             rng.choice(bg, n_bg, replace=len(bg) < n_bg) if n_bg else np.zeros(0, np.int64)]
    return np.concatenate(parts).astype(np.int64)


def train_fc_head(pooled, labels, ious, num_classes: int, hidden: int = 512,
                  iterations: int = 2000, batch_size: int = 128, lr: float = 1e-3,
                  weight_decay: float = 5e-4, fg_fraction: float = FG_FRACTION,
                  fg_iou: float = FG_IOU, bg_iou: tuple[float, float] = BG_IOU,
                  device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
                  val=None, val_windows: int = 8000) -> tuple[FCHead, dict]:
    """Fine-tune an :class:`FCHead` on stored pooled vectors with the conv trunk frozen.

    ``pooled`` (N, D) float16/float32 array (memmaps fine), ``labels`` (N,) int in
    0..K with K = background (a window's class is that of its best-overlapping
    ground truth when IoU >= ``fg_iou``, else K), ``ious`` (N,). Adam, ``iterations``
    mini-batches from :func:`sample_minibatch`. ``val=(pooled, labels)`` adds a
    validation loss/accuracy (on a fixed random sample of at most ``val_windows``
    of them) every 5% of training and keeps the weights with the lowest validation
    loss (early stopping). Returns ``(head in eval mode, history)``
    with ``history["loss"]`` (per iteration), ``history["val"]`` and
    ``history["best_iteration"]``.
    Taught in chapter 07.
    """
    from tqdm.auto import tqdm

    labels = np.asarray(labels, np.int64)
    ious = np.asarray(ious, np.float32)
    if not (len(pooled) == len(labels) == len(ious)):
        raise ValueError(f"pooled ({len(pooled)}), labels ({len(labels)}) and ious "
                         f"({len(ious)}) must have the same number of rows")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(device)
    head = FCHead(np.asarray(pooled[:1]).shape[1], num_classes, hidden)
    sample = np.asarray(pooled[np.sort(rng.choice(len(pooled), min(2000, len(pooled)), replace=False))],
                        np.float32)
    head.input_scale.fill_(1.0 / max(float(np.sqrt((sample ** 2).mean())), 1e-6))
    head.to(device).train()
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))  # one kernel per step
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(iterations, 1))
    history = {"loss": [], "val": [], "best_iteration": iterations}
    every = max(iterations // 20, 1)
    if val is not None:  # a fixed sample of the held-out windows keeps each check cheap
        keep = np.sort(rng.choice(len(val[1]), min(val_windows, len(val[1])), replace=False))
        val = (val[0][keep], np.asarray(val[1])[keep])
    best_loss, best_state = float("inf"), None
    for it in tqdm(range(iterations), desc="fine-tune fc6-fc8", disable=not progress, leave=False):
        rows = np.sort(sample_minibatch(labels, ious, batch_size, rng, fg_fraction, fg_iou, bg_iou))
        x = torch.from_numpy(np.asarray(pooled[rows], np.float32)).to(device)
        y = torch.from_numpy(labels[rows]).to(device)
        loss = nn.functional.cross_entropy(head(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        history["loss"].append(loss.item())
        if val is not None and ((it + 1) % every == 0 or it == iterations - 1):
            head.eval()
            metrics = classification_metrics(head, *val, device=device)
            history["val"].append({"iteration": it + 1, **metrics})
            if metrics["loss"] < best_loss:  # early stopping on the held-out windows
                best_loss, history["best_iteration"] = metrics["loss"], it + 1
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            head.train()
    if best_state is not None:
        head.load_state_dict(best_state)
    return head.eval().cpu(), history


@torch.no_grad()
def head_outputs(head: FCHead, pooled, batch: int = 4096, device=None) -> tuple[np.ndarray, np.ndarray]:
    """``(fc7 (N, hidden) float32, softmax probabilities (N, K+1) float32)`` for ``(N, D)``
    pooled vectors. Runs on ``device`` (default: where the head's weights are), in eval
    mode. Taught in chapter 07."""
    was_training = head.training
    head.eval()
    device = device or next(head.parameters()).device
    fc7, probs = [], []
    for start in range(0, len(pooled), batch):
        x = torch.as_tensor(np.asarray(pooled[start:start + batch], np.float32)).to(device)
        f = head.fc7_activations(x)
        fc7.append(f.cpu().numpy())
        probs.append(torch.softmax(head.fc8(f), 1).cpu().numpy())
    head.train(was_training)
    hidden, k1 = head.hidden, head.num_classes + 1
    return (np.concatenate(fc7) if fc7 else np.zeros((0, hidden), np.float32),
            np.concatenate(probs) if probs else np.zeros((0, k1), np.float32))


def classification_metrics(head: FCHead, pooled, labels, device=None) -> dict:
    """Window-classification loss and accuracy (overall and foreground-only) of ``head``
    on ``(N, D)`` pooled vectors with labels in 0..K. Taught in chapter 07."""
    _, probs = head_outputs(head, pooled, device=device)
    labels = np.asarray(labels, np.int64)
    loss = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
    pred = probs.argmax(1)
    fg = labels < head.num_classes
    return {"loss": loss, "accuracy": float((pred == labels).mean()),
            "fg_accuracy": float((pred[fg] == labels[fg]).mean()) if fg.any() else float("nan")}
